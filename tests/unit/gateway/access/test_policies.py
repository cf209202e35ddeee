"""Unit tests for tensorwasm_gateway.access.policies: the RPC table against the proto, and
the admin class enforced by the guard (role, concurrency cap, audit) end to end."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from tensorwasm.gateway.v1 import gateway_service_pb2
from tensorwasm_common.errors import Code, ServiceError
from tensorwasm_gateway.access.audit import AuditLog
from tensorwasm_gateway.access.guard import Guard, GuardInterceptor
from tensorwasm_gateway.access.policies import (
    CALL_CLASSES,
    GATEWAY_POLICIES,
    GATEWAY_RPCS,
    GATEWAY_SERVICE,
    MethodPolicies,
    policy_of,
)
from tensorwasm_gateway.access.ratelimit import BucketConfig, ConcurrencyCaps, RateLimiter
from tensorwasm_gateway.access.tokens import TokenStore, parse_tokens

FLEET_METHOD = "/tensorwasm.test.v1.FleetService/DrainExecutor"
ADMIN_TOKEN = "adm-0123456789abcdef"
WILDCARD_TOKEN = "wild-0123456789abcdef"


def test_every_gateway_rpc_has_exactly_one_entry() -> None:
    service = gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"]
    assert service.full_name == GATEWAY_SERVICE
    rpcs = {method.name for method in service.methods}
    assert sorted(rpcs - set(GATEWAY_RPCS)) == [], "RPCs without an access-class entry"
    assert sorted(set(GATEWAY_RPCS) - rpcs) == [], "entries that name no RPC"
    assert GATEWAY_POLICIES.methods == {f"/{GATEWAY_SERVICE}/{rpc}" for rpc in rpcs}


def test_entries_are_consistent() -> None:
    for rpc, (call_class, audited) in GATEWAY_RPCS.items():
        assert call_class in CALL_CLASSES
        # Whatever invokes guest code or changes state is audited; reads are not.
        assert audited == (call_class != "read"), rpc
        policy = policy_of(f"/{GATEWAY_SERVICE}/{rpc}")
        assert policy.invoking == (call_class == "invoke")


def test_action_names() -> None:
    assert policy_of(f"/{GATEWAY_SERVICE}/CallInstance").action == "call_instance"
    assert policy_of(f"/{GATEWAY_SERVICE}/Invoke").action == "invoke"


def test_unlisted_method_is_an_audited_admin_call() -> None:
    policy = policy_of(f"/{GATEWAY_SERVICE}/NotInTheTable")
    assert (policy.call_class, policy.audited, policy.invoking) == ("admin", True, False)


def test_unknown_class_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown call classes"):
        MethodPolicies({FLEET_METHOD: ("fleet", True)})  # type: ignore[dict-item]


# --- the admin class through the interceptor ----------------------------------------------------


class ListSink:
    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def write(self, line: bytes) -> None:
        self.lines.append(json.loads(line))

    def close(self) -> None:
        pass


class FakeContext:
    def __init__(self, token: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"), ("x-tensorwasm-tenant", "acme"))

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def set_trailing_metadata(self, metadata: object) -> None:
        pass

    def peer(self) -> str:
        return "ipv4:10.0.0.5:4000"


def _interceptor(sink: ListSink, admin_cap: int) -> GuardInterceptor:
    tokens = TokenStore(parse_tokens(f"{ADMIN_TOKEN}:role=admin;{WILDCARD_TOKEN}:tenant=*"))
    policies = MethodPolicies({FLEET_METHOD: ("admin", True)})
    guard = Guard(
        tokens,
        RateLimiter(BucketConfig(0, 0), BucketConfig(0, 0)),
        ConcurrencyCaps({"admin": admin_cap}),
        AuditLog(sink),
        policies,
    )
    return GuardInterceptor(guard)


async def _guarded(interceptor: GuardInterceptor, behavior: Any) -> Any:
    async def continuation(details: object) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(behavior)

    handler = await interceptor.intercept_service(
        continuation, SimpleNamespace(method=FLEET_METHOD)
    )
    return handler.unary_unary


def test_admin_method_needs_the_admin_role() -> None:
    sink = ListSink()
    interceptor = _interceptor(sink, admin_cap=4)
    ran: list[str] = []

    async def drain(request: object, context: object) -> str:
        ran.append("drain")
        return "drained"

    async def scenario() -> None:
        call = await _guarded(interceptor, drain)
        with pytest.raises(ServiceError) as denied:
            await call(None, FakeContext(WILDCARD_TOKEN))
        assert denied.value.code == Code.PERMISSION_DENIED
        assert denied.value.reason == "ADMIN_SCOPE_REQUIRED"
        assert ran == []
        assert await call(None, FakeContext(ADMIN_TOKEN)) == "drained"
        assert ran == ["drain"]

    asyncio.run(scenario())
    assert [(r["action"], r["outcome"]["reason"]) for r in sink.lines] == [
        ("drain_executor", "ADMIN_SCOPE_REQUIRED"),
        ("drain_executor", ""),
    ]
    assert [r["actor"]["scope"]["kind"] for r in sink.lines] == ["wildcard", "admin"]


def test_admin_calls_have_their_own_concurrency_cap() -> None:
    interceptor = _interceptor(ListSink(), admin_cap=1)

    async def scenario() -> None:
        release = asyncio.Event()
        entered = asyncio.Event()

        async def hold(request: object, context: object) -> str:
            entered.set()
            await release.wait()
            return "done"

        call = await _guarded(interceptor, hold)
        first = asyncio.ensure_future(call(None, FakeContext(ADMIN_TOKEN)))
        await entered.wait()
        with pytest.raises(ServiceError) as exhausted:
            await call(None, FakeContext(ADMIN_TOKEN))
        assert exhausted.value.reason == "CONCURRENCY_EXHAUSTED"
        assert exhausted.value.metadata["call_class"] == "admin"
        release.set()
        assert await first == "done"
        assert await call(None, FakeContext(ADMIN_TOKEN)) == "done"  # the slot came back

    asyncio.run(scenario())
