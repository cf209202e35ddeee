"""The face as a drop-in for the original's clients: X-Trace-Id on every response (the
caller's trace continued on the gRPC call), CORS, the Host allowlist, and the
`tensor_wasm_*` HTTP series by route template."""

from __future__ import annotations

import json
import re

import pytest
from tensorwasm_gateway.http.app import FaceOptions

from tests.unit.gateway.http.conftest import Face

TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE}-b7ad6b7169203331-01"
ADD = json.dumps({"export": "add", "args": [1, 2]}).encode()


def test_every_response_carries_a_trace_id_that_the_grpc_call_shares(face: Face) -> None:
    status, headers, _ = face.request("POST", "/functions/add/invoke", ADD, traceparent=TRACEPARENT)
    assert status == 200 and headers["x-trace-id"] == TRACE
    assert face.gateway.metadata[-1]["traceparent"] == TRACEPARENT
    # Without (or with a malformed) traceparent a new trace starts and is sent downstream.
    for sent in ({}, {"traceparent": "00-zz-nope-01"}):
        status, headers, _ = face.request("POST", "/functions/add/invoke", ADD, **sent)
        trace = headers["x-trace-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", trace) and trace != TRACE
        assert face.gateway.metadata[-1]["traceparent"].split("-")[1] == trace
    # Errors of the face itself carry one too.
    for method, path in (("GET", "/nope"), ("DELETE", "/healthz")):
        _, headers, _ = face.request(method, path)
        assert re.fullmatch(r"[0-9a-f]{32}", headers["x-trace-id"])


def test_no_cross_origin_access_by_default(face: Face) -> None:
    status, headers, _ = face.request("GET", "/healthz", origin="https://app.example")
    assert status == 200 and "access-control-allow-origin" not in headers
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    assert face.request("OPTIONS", "/functions", **preflight)[0] == 405


@pytest.mark.parametrize(
    "face", [FaceOptions(cors_allowed_origins=("https://app.example",))], indirect=True
)
def test_allowed_origins_get_cors_headers(face: Face) -> None:
    preflight = {
        "origin": "https://app.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, x-tensorwasm-tenant",
    }
    status, headers, _ = face.request("OPTIONS", "/functions/add/invoke", **preflight)
    assert status == 200 and headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in headers["access-control-allow-methods"]
    _, headers, _ = face.request("GET", "/healthz", origin="https://app.example")
    assert headers["access-control-allow-origin"] == "https://app.example"
    _, headers, _ = face.request("GET", "/healthz", origin="https://evil.example")
    assert "access-control-allow-origin" not in headers


@pytest.mark.parametrize("face", [FaceOptions(trusted_hosts=("API.example.com",))], indirect=True)
def test_only_trusted_hosts_are_served(face: Face) -> None:
    for host in ("api.example.com", "api.example.com:443", "API.EXAMPLE.COM:80"):
        assert face.request("GET", "/healthz", host=host)[0] == 200, host
    for host in ("evil.example", "api.example.com:8443", f"{face.host}:{face.port}"):
        status, headers, body = face.request("GET", "/healthz", host=host)
        assert status == 400, host
        assert json.loads(body)["error"]["kind"] == "bad_request"
        assert "x-trace-id" in headers


def test_http_series_are_labelled_by_route_template(face: Face) -> None:
    face.request("POST", "/functions/add/invoke", ADD)
    face.request("GET", "/no/such/route")
    _, _, body = face.request("GET", "/metrics")
    text = body.decode()
    assert re.search(
        r'tensor_wasm_http_requests_total\{method="POST",route="/functions/:id/invoke",'
        r'status="200"\} [1-9]',
        text,
    )
    assert re.search(
        r'tensor_wasm_http_requests_total\{method="GET",route="unknown",status="404"\}', text
    )
    assert "tensor_wasm_http_request_duration_seconds_bucket" in text
    assert "tensor_wasm_http_requests_in_flight" in text
    assert re.search(r"^tensor_wasm_jobs_active \d", text, re.M)
    assert re.search(r'^tensor_wasm_build_info\{.*version="[^"]+".*\} 1\.0$', text, re.M)
