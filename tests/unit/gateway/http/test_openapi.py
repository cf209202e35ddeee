"""The face's OpenAPI 3.1 document: valid (openapi-spec-validator), served at
/openapi.json, the same routes and methods as the app, and the bodies the face answers
valid against the schemas it documents."""

from __future__ import annotations

import base64
import json
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route
from tensorwasm_gateway.http.openapi import openapi_document

from tests.unit.gateway.http.conftest import Face

DOCUMENT = openapi_document()
WASM_B64 = base64.b64encode(b"\0asm\1\0\0\0").decode()


def test_the_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"].startswith("3.1")
    validate(DOCUMENT)


def test_it_is_served_at_openapi_json(face: Face) -> None:
    status, headers, body = face.request("GET", "/openapi.json")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == json.loads(json.dumps(DOCUMENT))


def test_it_documents_exactly_the_apps_routes_and_methods(face: Face) -> None:
    served = {
        (method.lower(), route.path)
        for route in face.app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
    }
    documented = {
        (method, path)
        for path, operations in DOCUMENT["paths"].items()
        for method in operations
        if method in {"get", "post", "put", "delete", "patch"}
    }
    assert served == documented


def _check(path: str, method: str, status: int, body: bytes) -> None:
    """`body` against the schema documented for (path, method, status)."""
    response = DOCUMENT["paths"][path][method]["responses"][str(status)]
    schema = response["content"]["application/json"]["schema"]
    validator = jsonschema.Draft202012Validator({**DOCUMENT, **schema})
    validator.validate(json.loads(body))


@pytest.mark.parametrize(
    ("method", "path", "url", "body", "status"),
    [
        ("get", "/healthz", "/healthz", None, 200),
        ("post", "/functions", "/functions", {"name": "my fn", "wasm_b64": WASM_B64}, 200),
        ("post", "/functions", "/functions", {"name": " ", "wasm_b64": WASM_B64}, 400),
        ("post", "/functions/{id}/invoke", "/functions/f/invoke", {"args": [1, 2]}, 200),
        ("post", "/functions/{id}/invoke", "/functions/f/invoke", {"args": "x"}, 400),
        ("post", "/v1/completions", "/v1/completions", {"model": "nope"}, 404),
        ("post", "/v1/completions", "/v1/completions", {"model": "m", "n": 2}, 400),
        ("post", "/v1/chat/completions", "/v1/chat/completions", {"messages": []}, 400),
    ],
)
def test_answers_match_their_documented_schemas(
    face: Face, method: str, path: str, url: str, body: Any, status: int
) -> None:
    payload = None if body is None else json.dumps(body).encode()
    got, _, answer = face.request(method.upper(), url, payload)
    assert got == status, answer
    _check(path, method, status, answer)
