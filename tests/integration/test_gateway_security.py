"""Gateway security over real gRPC: the auth matrix, a real burst, and the audit log."""

from __future__ import annotations

import functools
import itertools
import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_common.status import error_from_rpc

from tests.integration.conftest import RunningStack, start_stack

pytestmark = pytest.mark.integration

TOKENS = {
    "admin": "adm-integration-0123456789",
    "wildcard": "wild-integration-0123456789",
    "acme": "acme-integration-0123456789",
    "acme_beta": "two-integration-0123456789",
    "burst": "burst-integration-0123456789",
}
TOKEN_CONFIG = (
    f"{TOKENS['admin']}:role=admin;{TOKENS['wildcard']}:tenant=*;"
    f"{TOKENS['acme']}:tenant=acme;{TOKENS['acme_beta']}:tenant=acme,beta;"
    f"{TOKENS['burst']}:tenant=burst"
)
COVERS = {
    "admin": {"acme", "beta", "gamma"},
    "wildcard": {"acme", "beta", "gamma"},
    "acme": {"acme"},
    "acme_beta": {"acme", "beta"},
}
BURST_QPS = 5.0
BURST = 10


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    data_dir = tmp_path_factory.mktemp("secured")
    running = start_stack(
        data_dir,
        {
            "TENSORWASM_GATEWAY_TOKENS": TOKEN_CONFIG,
            "TENSORWASM_GATEWAY_AUDIT_LOG": f"file:{data_dir / 'audit.jsonl'}",
            "TENSORWASM_GATEWAY_RATE_LIMIT_TENANT_QPS": str(BURST_QPS),
            "TENSORWASM_GATEWAY_RATE_LIMIT_TENANT_BURST": str(BURST),
        },
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def stub(secured: RunningStack) -> Iterator[pb_grpc.GatewayServiceStub]:
    with grpc.insecure_channel(secured.gateway) as channel:
        yield pb_grpc.GatewayServiceStub(channel)


def _metadata(who: str | None, tenant: str | None, request_id: str = "") -> list[tuple[str, str]]:
    metadata = []
    if who is not None:
        metadata.append(("authorization", f"Bearer {TOKENS.get(who, who)}"))
    if tenant is not None:
        metadata.append(("x-tensorwasm-tenant", tenant))
    if request_id:
        metadata.append(("x-request-id", request_id))
    return metadata


def _outcome(call: Callable[[], Any]) -> tuple[str, str]:
    try:
        result = call()
        if hasattr(result, "__next__"):
            list(result)
    except grpc.RpcError as exc:
        error = error_from_rpc(exc)
        return error.code.name, error.reason
    return "OK", ""


@pytest.fixture(scope="module")
def deployed(stub: pb_grpc.GatewayServiceStub, wasm: Callable[[str], bytes]) -> str:
    for tenant in ("acme", "beta", "gamma"):
        stub.CreateFunction(
            pb.CreateFunctionRequest(function_id="add", wasm=wasm("add")),
            metadata=_metadata("admin", tenant),
            timeout=30,
        )
    return "functions/add"


def _actions(name: str) -> dict[str, Callable[[pb_grpc.GatewayServiceStub, Any], Any]]:
    invoke = pb.InvokeRequest(name=name, export_name="add", args=[Value(i32=1), Value(i32=2)])
    return {
        "invoke": lambda s, md: s.Invoke(invoke, metadata=md, timeout=30),
        "stream": lambda s, md: s.InvokeStream(
            pb.InvokeStreamRequest(invocation=invoke), metadata=md, timeout=30
        ),
        "read": lambda s, md: s.GetFunction(pb.GetFunctionRequest(name=name), metadata=md),
        # Deleting a function that does not exist: NOT_FOUND when allowed, so it changes nothing.
        "write": lambda s, md: s.DeleteFunction(
            pb.DeleteFunctionRequest(name="functions/absent"), metadata=md
        ),
    }


EXPECTED_ALLOWED = {
    "invoke": ("OK", ""),
    "stream": ("OK", ""),
    "read": ("OK", ""),
    "write": ("NOT_FOUND", "FUNCTION_NOT_FOUND"),
}


def test_auth_matrix_over_grpc(stub: pb_grpc.GatewayServiceStub, deployed: str) -> None:
    actions = _actions(deployed)
    failures = []
    for who, tenant, action in itertools.product(COVERS, ("acme", "beta", "gamma"), actions):
        got = _outcome(functools.partial(actions[action], stub, _metadata(who, tenant)))
        allowed = tenant in COVERS[who]
        expected = (
            EXPECTED_ALLOWED[action] if allowed else ("PERMISSION_DENIED", "TENANT_SCOPE_DENIED")
        )
        if got != expected:
            failures.append((who, tenant, action, got, expected))
    assert failures == []


@pytest.mark.parametrize(
    "who", [None, "not-a-configured-token-123", "Basic"], ids=["missing", "unknown", "malformed"]
)
def test_unauthenticated_calls(
    stub: pb_grpc.GatewayServiceStub, deployed: str, who: str | None
) -> None:
    metadata = _metadata(who, "acme")
    if who == "Basic":
        metadata = [("authorization", "Basic YWNtZTp4"), ("x-tensorwasm-tenant", "acme")]
    for action in _actions(deployed).values():
        outcome = _outcome(functools.partial(action, stub, metadata))
        assert outcome == ("UNAUTHENTICATED", "UNAUTHENTICATED")


def test_permission_is_checked_before_existence(stub: pb_grpc.GatewayServiceStub) -> None:
    # The acme token asking about beta's functions learns nothing: denied, not NOT_FOUND.
    for name in ("functions/add", "functions/never-deployed"):
        call = lambda n=name: stub.GetFunction(  # noqa: E731
            pb.GetFunctionRequest(name=n), metadata=_metadata("acme", "beta")
        )
        assert _outcome(call) == ("PERMISSION_DENIED", "TENANT_SCOPE_DENIED")


def test_single_tenant_token_defaults_to_its_tenant(
    stub: pb_grpc.GatewayServiceStub, deployed: str
) -> None:
    reply = stub.GetFunction(pb.GetFunctionRequest(name=deployed), metadata=_metadata("acme", None))
    assert reply.function.tenant == "acme"


def test_real_burst_is_rate_limited(stub: pb_grpc.GatewayServiceStub) -> None:
    results: list[tuple[str, str, float | None]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def worker() -> None:
        barrier.wait()
        for _ in range(8):
            try:
                stub.ListFunctions(pb.ListFunctionsRequest(), metadata=_metadata("burst", None))
                outcome: tuple[str, str, float | None] = ("OK", "", None)
            except grpc.RpcError as exc:
                error = error_from_rpc(exc)
                outcome = (error.code.name, error.reason, error.retry_after_seconds)
            with lock:
                results.append(outcome)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    admitted = sum(1 for code, _, _ in results if code == "OK")
    rejected = [r for r in results if r[0] != "OK"]
    assert len(results) == 64
    assert admitted >= BURST
    assert admitted <= BURST + BURST_QPS * elapsed + 1
    assert rejected, "64 calls at once must overflow a burst of 10"
    assert {(code, reason) for code, reason, _ in rejected} == {
        ("RESOURCE_EXHAUSTED", "RATE_LIMITED")
    }
    assert all(retry is not None and retry >= 1 for _, _, retry in rejected)


def _audit(secured: RunningStack) -> list[dict[str, Any]]:
    path = Path(secured.data_dir) / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_audit_lines_for_allowed_and_denied_calls(
    secured: RunningStack, stub: pb_grpc.GatewayServiceStub, deployed: str
) -> None:
    actions = _actions(deployed)
    actions["invoke"](stub, _metadata("acme", "acme", "audit-allowed"))
    _outcome(lambda: actions["invoke"](stub, _metadata("acme", "beta", "audit-denied")))
    _outcome(
        lambda: actions["write"](stub, _metadata("nope-token-0123456789", "acme", "audit-401"))
    )
    _outcome(lambda: actions["read"](stub, _metadata("acme", "acme", "audit-read")))
    by_id = {r["request_id"]: r for r in _audit(secured)}
    allowed = by_id["audit-allowed"]
    assert allowed["action"] == "invoke"
    assert allowed["resource"] == deployed
    assert allowed["tenant"] == "acme"
    assert allowed["outcome"] == {"code": "OK", "reason": ""}
    assert allowed["actor"]["kind"] == "bearer"
    assert allowed["actor"]["token_id"].startswith("tok_")
    assert allowed["actor"]["scope"] == {"kind": "tenant_set", "tenants": ["acme"]}
    assert allowed["peer"].startswith("127.0.0.1:")
    assert len(allowed["trace_id"]) == 32 and int(allowed["trace_id"], 16)
    assert allowed["latency_ms"] > 0
    denied = by_id["audit-denied"]
    assert denied["outcome"] == {"code": "PERMISSION_DENIED", "reason": "TENANT_SCOPE_DENIED"}
    assert denied["tenant"] == "beta"
    unauthenticated = by_id["audit-401"]
    assert unauthenticated["actor"] is None
    assert unauthenticated["action"] == "delete_function"
    assert unauthenticated["outcome"]["code"] == "UNAUTHENTICATED"
    assert "audit-read" not in by_id  # reads are not audited
    assert not any(TOKENS["acme"] in json.dumps(r) for r in by_id.values())


def test_metrics_count_invocations_and_rejections(
    secured: RunningStack, stub: pb_grpc.GatewayServiceStub, deployed: str
) -> None:
    _actions(deployed)["invoke"](stub, _metadata("acme", "acme"))
    _outcome(lambda: _actions(deployed)["invoke"](stub, _metadata("acme", "gamma")))
    address = secured.services["gateway"].metrics_address
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    assert 'tensorwasm_gateway_invocations_total{code="OK",method="invoke",tenant="acme"}' in text
    assert (
        'tensorwasm_gateway_rejections_total{reason="TENANT_SCOPE_DENIED",tenant="gamma"}' in text
    )
    assert "tensorwasm_gateway_jobs_active" in text
    assert "tensorwasm_gateway_audit_write_failures_total 0.0" in text
