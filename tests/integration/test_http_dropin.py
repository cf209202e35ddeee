"""The HTTP face as a drop-in for the original's clients, on real stacks: deploy by
display name, export discovery, `{}` bodies, numeric tenants, the invoke deadline, the
cross-tenant 404, and the executor's `tensor_wasm_*` series."""

from __future__ import annotations

import base64
import http.client
import json
import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import wasmtime

from tests.integration.conftest import RunningStack, start_stack

pytestmark = pytest.mark.integration

MAIN = bytes(
    wasmtime.wat2wasm(
        """(module
          (func (export "other") (result i32) (i32.const 1))
          (func (export "main") (result i32) (i32.const 7))
          (func (export "spin") (loop $l (br $l))))"""
    )
)


def _request(
    stack: RunningStack, method: str, path: str, body: Any = None, **headers: str
) -> tuple[int, dict[str, str], Any]:
    host, port = stack.services["gateway"].http_address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        payload = b"" if body is None else json.dumps(body).encode()
        connection.request(method, path, body=payload, headers=headers)
        reply = connection.getresponse()
        raw = reply.read()
        return (
            reply.status,
            {k.lower(): v for k, v in reply.getheaders()},
            json.loads(raw or "null"),
        )
    finally:
        connection.close()


def _deploy(stack: RunningStack, tenant: str, name: str = "main module") -> str:
    body = {"name": name, "wasm_b64": base64.b64encode(MAIN).decode()}
    status, _, created = _request(
        stack, "POST", "/functions", body, **{"x-tensorwasm-tenant": tenant}
    )
    assert status == 200, created
    function_id: str = created["id"]
    return function_id


def test_numeric_tenants_discovery_and_empty_bodies(stack: RunningStack) -> None:
    tenant = {"x-tensorwasm-tenant": "4242"}  # the original's u64 tenant ids work as is
    function_id = _deploy(stack, "4242")
    # `{}` on a no-argument export is a call; with several exports `main` is chosen.
    status, headers, body = _request(
        stack, "POST", f"/functions/{function_id}/invoke", {}, **tenant
    )
    assert (status, body) == (200, {"function_id": function_id, "result": [7]})
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-trace-id"])
    status, _, body = _request(stack, "POST", f"/functions/{function_id}/invoke", None, **tenant)
    assert (status, body["result"]) == (200, [7])
    # Another tenant gets 404, never 403: ids cannot be probed across tenants.
    status, _, body = _request(
        stack, "POST", f"/functions/{function_id}/invoke", {}, **{"x-tensorwasm-tenant": "4243"}
    )
    assert (status, body["error"]["kind"]) == (404, "not_found")


def test_the_executor_exports_the_instance_series(stack: RunningStack) -> None:
    def series(name: str) -> float:
        address = stack.services["executor"].metrics_address
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
            text = response.read().decode()
        found = re.search(rf"^{name} (\S+)$", text, re.M)
        assert found, name
        return float(found[1])

    spawns = series("tensor_wasm_instance_spawns_total")
    ends = series("tensor_wasm_instance_terminations_total")
    function_id = _deploy(stack, "metrics-tenant")
    _request(
        stack,
        "POST",
        f"/functions/{function_id}/invoke",
        {},
        **{"x-tensorwasm-tenant": "metrics-tenant"},
    )
    assert series("tensor_wasm_instance_spawns_total") > spawns
    assert series("tensor_wasm_instance_terminations_total") > ends
    assert series("tensor_wasm_active_instances") >= 0
    assert series("tensor_wasm_kernel_dispatches_total") >= 0


@pytest.fixture(scope="module")
def short_deadline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = start_stack(
        tmp_path_factory.mktemp("deadline"), {"TENSORWASM_GATEWAY_HTTP_INVOKE_TIMEOUT_SECONDS": "1"}
    )
    try:
        yield running
    finally:
        running.stop()


def test_an_http_invoke_past_the_faces_deadline_is_504(short_deadline: RunningStack) -> None:
    function_id = _deploy(short_deadline, "default")
    status, _, body = _request(
        short_deadline, "POST", f"/functions/{function_id}/invoke", {"export": "spin"}
    )
    assert (status, body["error"]["kind"]) == (504, "invoke_timeout")
    # A call within the deadline is served as usual.
    status, _, body = _request(short_deadline, "POST", f"/functions/{function_id}/invoke", {})
    assert (status, body["result"]) == (200, [7])
