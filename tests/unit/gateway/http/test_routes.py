"""Unit tests for tensorwasm_gateway.http's routes: bodies, statuses and error envelopes."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator

import pytest
from tensorwasm_gateway.http import documents

from tests.unit.gateway.http.conftest import MAX_BODY_BYTES, Face

WASM_B64 = base64.b64encode(b"\0asm\1\0\0\0").decode()


def error_of(body: bytes) -> dict[str, str]:
    error = json.loads(body)["error"]
    assert isinstance(error, dict)
    return error


def test_healthz_and_a_request_id_on_every_response(face: Face) -> None:
    status, headers, body = face.request("GET", "/healthz", **{"x-request-id": "abc-1"})
    assert (status, json.loads(body), headers["x-request-id"]) == (200, {"status": "ok"}, "abc-1")
    status, headers, _ = face.request("GET", "/nowhere", **{"x-request-id": "not valid!"})
    assert status == 404 and len(headers["x-request-id"]) == 32


def test_unknown_routes_and_methods(face: Face) -> None:
    status, _, body = face.request("GET", "/nowhere")
    assert status == 404
    assert error_of(body) == {
        "kind": "not_found",
        "message": "no such route",
        "code": "NOT_FOUND",
        "reason": "ROUTE_NOT_FOUND",
    }
    assert face.request("GET", "/functions/")[0] == 404  # no redirect to /functions
    for method, path, allow in [
        ("GET", "/functions", "POST"),
        ("POST", "/healthz", "GET"),
        ("HEAD", "/healthz", "GET"),
        ("GET", "/functions/add/invoke", "POST"),
    ]:
        status, headers, body = face.request(method, path)
        assert (status, headers["allow"]) == (405, allow), (method, path)
        if method != "HEAD":
            assert error_of(body) == {"kind": "method_not_allowed", "message": "method not allowed"}


def test_deploy_and_invoke_forward_the_callers_headers(face: Face) -> None:
    body = json.dumps({"name": "add", "wasm_b64": WASM_B64}).encode()
    headers = {"authorization": "Bearer t", "x-tensorwasm-tenant": "acme", "x-request-id": "r1"}
    status, _, reply = face.request("POST", "/functions", body, **headers)
    assert status == 200, reply
    created = json.loads(reply)
    # The name is a display name; the id is an opaque UUIDv4 (starting with a letter).
    assert str(uuid.UUID(created["id"], version=4)) == created["id"] and created["id"][0].isalpha()
    assert created == {
        "id": created["id"],
        "name": f"functions/{created['id']}",
        "tenant": "default",
        "module_digest": "ab" * 32,
        "exports": ["add"],
        "display_name": "add",
    }
    again = json.loads(face.request("POST", "/functions", body, **headers)[2])
    assert again["id"] != created["id"]  # the same name twice: two functions
    sent = face.gateway.metadata[-1]
    assert (sent["authorization"], sent["x-tensorwasm-tenant"]) == ("Bearer t", "acme")
    assert (sent["x-request-id"], sent["x-forwarded-for"]) == ("r1", "127.0.0.1")
    body = json.dumps({"export": "add", "args": [2, 40]}).encode()
    status, _, reply = face.request(
        "POST", "/functions/add/invoke", body, **{"x-forwarded-for": "10.0.0.1"}
    )
    assert (status, json.loads(reply)) == (200, {"function_id": "add", "result": [42]})
    assert face.gateway.metadata[-1]["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"


def test_bad_bodies_have_the_originals_kinds(face: Face) -> None:
    cases = [
        (b"{not json", "invalid_json"),
        (json.dumps({"name": " ", "wasm_b64": WASM_B64}).encode(), "invalid_name"),
        (json.dumps({"name": "x", "wasm_b64": "@@@"}).encode(), "invalid_base64"),
        (json.dumps({"name": "x", "wasm_b64": "AAAA", "extra": 1}).encode(), "invalid_json"),
        (json.dumps({"name": "x", "wasm_b64": "AAAAAAAA"}).encode(), "bad_request"),
    ]
    for body, kind in cases:
        status, _, reply = face.request("POST", "/functions", body)
        assert (status, error_of(reply)["kind"]) == (400, kind), body


def chunks(body: bytes, size: int) -> Iterator[bytes]:
    yield from (body[i : i + size] for i in range(0, len(body), size))


def test_chunked_request_bodies_are_accepted(face: Face) -> None:
    """The old server refused Transfer-Encoding: chunked with 411."""
    body = json.dumps({"name": "add", "wasm_b64": WASM_B64}).encode()
    connection = face.connection()
    connection.request("POST", "/functions", body=chunks(body, 7), encode_chunked=True)
    reply = connection.getresponse()
    assert (reply.status, json.loads(reply.read())["display_name"]) == (200, "add")
    connection.close()


def test_bodies_past_the_cap_are_413_with_the_json_envelope(face: Face) -> None:
    too_large = b"x" * (MAX_BODY_BYTES + 1)
    status, headers, body = face.request("POST", "/functions", too_large)
    assert (status, headers["connection"]) == (413, "close")
    assert error_of(body) == {"kind": "body_too_large", "message": "body too large"}
    connection = face.connection()
    connection.request("POST", "/functions", body=chunks(too_large, 1000), encode_chunked=True)
    reply = connection.getresponse()
    assert (reply.status, error_of(reply.read())["kind"]) == (413, "body_too_large")
    connection.close()


def test_a_fault_of_the_face_is_500_json(face: Face, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> dict[str, object]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(documents, "outcome_json", broken)
    body = json.dumps({"export": "add", "args": [1, 2]}).encode()
    status, _, reply = face.request("POST", "/functions/add/invoke", body)
    assert (status, error_of(reply)["kind"]) == (500, "internal")
