"""The HTTP/JSON face against the gRPC API on the same stack: same results, and each
gRPC error's mapped kind and status, route by route."""

from __future__ import annotations

import base64
import http.client
import json
import time
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from tensorwasm.common.v1 import values_pb2
from tensorwasm_client.client import TensorWasmError

from tests.integration.conftest import RunningStack

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "wat"
ADD = bytes(wasmtime.wat2wasm((FIXTURES / "add.wat").read_text()))


def request(
    stack: RunningStack, method: str, path: str, tenant: str, body: object = None, **headers: str
) -> tuple[int, dict[str, str], bytes]:
    host, port = stack.services["gateway"].http_address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    payload = (
        b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
    )
    try:
        connection.request(
            method, path, body=payload, headers={"x-tensorwasm-tenant": tenant, **headers}
        )
        reply = connection.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        connection.close()


def error_of(body: bytes) -> dict[str, Any]:
    error = json.loads(body)["error"]
    assert isinstance(error, dict)
    return error


def grpc_error(call: Any) -> TensorWasmError:
    with pytest.raises(TensorWasmError) as caught:
        call()
    return caught.value


def test_healthz_and_metrics(stack: RunningStack, tenant: str) -> None:
    status, _, body = request(stack, "GET", "/healthz", tenant)
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    status, headers, body = request(stack, "GET", "/metrics", tenant)
    assert status == 200 and headers["content-type"].startswith("text/plain")
    assert b"tensorwasm_grpc_server_requests_total" in body


def test_deploy_invoke_delete_match_grpc(stack: RunningStack, tenant: str) -> None:
    wasm_b64 = base64.b64encode(ADD).decode()
    status, _, body = request(
        stack, "POST", "/functions", tenant, {"name": "my adder", "wasm_b64": wasm_b64}
    )
    assert status == 200, body
    created = json.loads(body)
    fid = created["id"]  # opaque: a UUIDv4 every route and the gRPC API accept
    with stack.client(tenant) as client:
        function = client.get_function(fid)
        assert created["module_digest"] == function.module_digest
        assert created["tenant"] == tenant and function.config.display_name == "my adder"
        # same request through both faces: same result
        status, _, body = request(
            stack, "POST", f"/functions/{fid}/invoke", tenant, {"export": "add", "args": [2, 40]}
        )
        grpc_reply = client.invoke(fid, "add", [values_pb2.Value(i32=2), values_pb2.Value(i32=40)])
        assert status == 200
        assert json.loads(body)["result"] == [grpc_reply.outcome.success.results[0].i32] == [42]
        # the same name again: a second function, as the original did
        status, _, body = request(
            stack, "POST", "/functions", tenant, {"name": "my adder", "wasm_b64": wasm_b64}
        )
        assert status == 200 and json.loads(body)["id"] != fid
        # an existing id over gRPC: ALREADY_EXISTS (409 on the face's own routes too)
        grpc = grpc_error(lambda: client.create_function(fid, ADD))
        assert grpc.reason == "FUNCTION_ALREADY_EXISTS"
        # delete, then a second delete is not_found (404) as in gRPC
        status, _, body = request(stack, "DELETE", f"/functions/{fid}", tenant)
        assert (status, body) == (204, b"")
        status, _, body = request(stack, "DELETE", f"/functions/{fid}", tenant)
        grpc = grpc_error(lambda: client.delete_function(fid))
        assert status == 404
        assert error_of(body)["kind"] == "not_found"
        assert (error_of(body)["code"], error_of(body)["reason"]) == (grpc.code, grpc.reason)


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        (b"{not json", 400, "invalid_json"),
        ({"name": "  ", "wasm_b64": "AAAA"}, 400, "invalid_name"),
        ({"name": "x", "wasm_b64": "@@@"}, 400, "invalid_base64"),
        ({"name": "x", "wasm_b64": base64.b64encode(b"notwasm!").decode()}, 400, "invalid_wasm"),
        ({"name": "x", "wasm_b64": "AAAA", "extra": 1}, 400, "invalid_json"),
    ],
)
def test_deploy_errors_have_the_originals_kinds(
    stack: RunningStack, tenant: str, body: object, status: int, kind: str
) -> None:
    got, _, reply = request(stack, "POST", "/functions", tenant, body)
    assert (got, error_of(reply)["kind"]) == (status, kind)


def test_invoke_errors_match_grpc(stack: RunningStack, tenant: str) -> None:
    with stack.client(tenant) as client:
        client.create_function("add", ADD)
        cases = [
            (
                "/functions/nope/invoke",
                {"args": []},
                lambda: client.invoke("nope"),
                404,
                "not_found",
            ),
            (
                "/functions/add/invoke",
                {"export": "missing"},
                lambda: client.invoke("add", "missing"),
                400,
                "missing_export",
            ),
        ]
        for path, body, grpc_call, status, kind in cases:
            got, _, reply = request(stack, "POST", path, tenant, body)
            grpc = grpc_error(grpc_call)
            error = error_of(reply)
            assert (got, error["kind"]) == (status, kind)
            assert (error["code"], error["reason"]) == (grpc.code, grpc.reason)
        got, _, reply = request(
            stack, "POST", "/functions/add/invoke", tenant, {"export": "add", "args": ["x", 1]}
        )
        assert (got, error_of(reply)["kind"]) == (400, "invalid_args")
    got, _, reply = request(stack, "GET", "/nowhere", tenant)
    assert (got, error_of(reply)["kind"]) == (404, "not_found")


def test_async_job_matches_get_invocation(stack: RunningStack, tenant: str) -> None:
    with stack.client(tenant) as client:
        client.create_function("add", ADD)
        status, _, body = request(
            stack, "POST", "/functions/add/invoke-async", tenant, {"export": "add", "args": [1, 2]}
        )
        assert status == 202
        job_id = json.loads(body)["job_id"]
        invocation = client.wait_invocation(job_id, 30)
        status, _, body = request(stack, "GET", f"/jobs/{job_id}", tenant)
        job = json.loads(body)
        assert status == 200
        assert (job["status"], job["result"]["result"]) == ("completed", [3])
        assert [v.i32 for v in invocation.outcome.success.results] == [3]
        # another tenant does not see it: not_found, as GetInvocation says
        status, _, body = request(stack, "GET", f"/jobs/{job_id}", tenant + "-other")
        assert (status, error_of(body)["reason"]) == (404, "INVOCATION_NOT_FOUND")
        # the gRPC view lists it
        assert invocation.name in [i.name for i in client.list_invocations()]


def test_invoke_stream_sse_ends_with_the_result(stack: RunningStack, tenant: str) -> None:
    with stack.client(tenant) as client:
        client.create_function("add", ADD)
    status, headers, body = request(
        stack,
        "POST",
        "/functions/add/invoke-stream",
        tenant,
        {"export": "add", "args": [5, 6]},
        accept="text/event-stream",
    )
    assert status == 200 and headers["content-type"] == "text/event-stream"
    frames = [f for f in body.decode().split("\n\n") if f]
    assert frames[-1].startswith("event: end\ndata: ")
    assert json.loads(frames[-1].split("data: ", 1)[1])["result"] == [11]
    status, _, body = request(
        stack, "POST", "/functions/nope/invoke-stream", tenant, {}, accept="text/event-stream"
    )
    assert (status, error_of(body)["kind"]) == (404, "not_found")


def test_http_callers_reach_the_grpc_interceptors(stack: RunningStack, tenant: str) -> None:
    """The face calls the gateway's own gRPC server: its request counter moves."""
    before = request(stack, "GET", "/metrics", tenant)[2].decode()
    request(stack, "POST", "/functions/nope/invoke", tenant, {})
    line = 'method="/tensorwasm.gateway.v1.GatewayService/GetFunction"'

    def count(text: str) -> float:
        return sum(
            float(x.rsplit(" ", 1)[1])
            for x in text.splitlines()
            if x.startswith("tensorwasm_grpc_server_requests_total") and line in x
        )

    # the interceptor counts the call as it ends, which may be after the reply was sent
    deadline = time.monotonic() + 60
    while count(after := request(stack, "GET", "/metrics", tenant)[2].decode()) == count(before):
        assert time.monotonic() < deadline, "the request counter never moved"
        time.sleep(0.05)
    assert count(after) == count(before) + 1


ADD_F64 = bytes(
    wasmtime.wat2wasm(
        '(module (func (export "add") (param f64 f64) (result f64)'
        " local.get 0 local.get 1 f64.add))"
    )
)
ADD_I32 = bytes(
    wasmtime.wat2wasm(
        '(module (func (export "add") (param i32 i32) (result i32)'
        " local.get 0 local.get 1 i32.add))"
    )
)
GET_FUNCTION = "/tensorwasm.gateway.v1.GatewayService/GetFunction"


def get_function_calls(stack: RunningStack) -> float:
    from tests.integration.test_service_surface import requests_total, scrape

    return requests_total(scrape(stack.services["gateway"].metrics_address), GET_FUNCTION, "OK")


def deploy(stack: RunningStack, tenant: str, wasm: bytes) -> None:
    """Deploys `wasm` as `sig` over gRPC (the face's POST would choose a new id)."""
    with stack.client(tenant) as client:
        client.create_function("sig", wasm)


def invoke(stack: RunningStack, tenant: str, args: list[Any]) -> tuple[int, Any]:
    status, _, body = request(
        stack, "POST", "/functions/sig/invoke", tenant, {"export": "add", "args": args}
    )
    return status, json.loads(body)


def test_a_redeploy_under_the_same_name_retypes_cached_signatures(
    stack: RunningStack, tenant: str
) -> None:
    """The face caches export signatures (5 s by default): two invokes read the function
    once; after a redeploy with other parameter types under the same name, within the
    cache's life, JSON args are typed by the new signature (the stale guess is caught
    by the executor's type check or by the typing itself, then retried once)."""
    deploy(stack, tenant, ADD_I32)
    before = get_function_calls(stack)
    assert invoke(stack, tenant, [2, 3]) == (200, {"function_id": "sig", "result": [5]})
    assert invoke(stack, tenant, [4, 5])[1]["result"] == [9]
    assert get_function_calls(stack) - before == 1  # the second invoke used the cache

    assert request(stack, "DELETE", "/functions/sig", tenant)[0] == 204
    deploy(stack, tenant, ADD_F64)  # same name, (f64, f64) -> f64
    status, document = invoke(stack, tenant, [2, 3])  # the cache still says (i32, i32)
    assert status == 200, document
    assert document["result"] == [5.0] and isinstance(document["result"][0], float)
    assert invoke(stack, tenant, [1.5, 2.5])[1]["result"] == [4.0]

    assert request(stack, "DELETE", "/functions/sig", tenant)[0] == 204
    deploy(stack, tenant, ADD_I32)  # back to (i32, i32); the cache says (f64, f64)
    status, document = invoke(stack, tenant, [2, 3])
    assert status == 200, document
    assert document["result"] == [5] and isinstance(document["result"][0], int)
    status, document = invoke(stack, tenant, [1.5, 2.5])  # a genuine mismatch stays one
    assert status == 400
    assert (document["error"]["kind"], document["error"]["reason"]) == (
        "invalid_args",
        "ARGUMENT_MISMATCH",
    )
    # async invocations always read the function: the job is typed by the new signature
    assert request(stack, "DELETE", "/functions/sig", tenant)[0] == 204
    deploy(stack, tenant, ADD_F64)
    status, _, body = request(
        stack, "POST", "/functions/sig/invoke-async", tenant, {"export": "add", "args": [1, 2]}
    )
    assert status == 202, body
    job = json.loads(body)["job_id"]
    deadline = time.monotonic() + 30
    while True:
        document = json.loads(request(stack, "GET", f"/jobs/{job}", tenant)[2])
        if document["status"] != "pending" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert document["status"] == "completed", document
    assert document["result"]["result"] == [3.0]
