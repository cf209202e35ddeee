"""Failed authentication is throttled per peer address: guessing tokens is slow, while
successful calls and other peers are unaffected."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from tensorwasm_common.errors import Code, ServiceError
from tensorwasm_gateway.access.audit import AuditLog
from tensorwasm_gateway.access.guard import Guard, GuardInterceptor
from tensorwasm_gateway.access.ratelimit import (
    AuthFailureThrottle,
    BucketConfig,
    ConcurrencyCaps,
    RateLimiter,
)
from tensorwasm_gateway.access.tokens import TokenStore, parse_tokens

GOOD_TOKEN = "good-0123456789abcdef"
METHOD = "/tensorwasm.gateway.v1.GatewayService/GetFunction"
BURST = 5


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeContext:
    def __init__(self, token: str, peer: str) -> None:
        self._metadata = (("authorization", f"Bearer {token}"), ("x-tensorwasm-tenant", "acme"))
        self._peer = peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def set_trailing_metadata(self, metadata: object) -> None:
        pass

    def peer(self) -> str:
        return self._peer


def _guard(clock: Clock) -> Guard:
    return Guard(
        TokenStore(parse_tokens(f"{GOOD_TOKEN}:tenant=*")),
        RateLimiter(BucketConfig(0, 0), BucketConfig(0, 0)),
        ConcurrencyCaps({}),
        AuditLog(None),
        auth_failures=AuthFailureThrottle(BucketConfig(1.0, BURST), clock=clock),
    )


def _reason(guard: Guard, token: str, peer: str) -> str:
    try:
        guard.authenticate([("authorization", f"Bearer {token}")], peer)
    except ServiceError as exc:
        return str(exc.reason)
    return "OK"


def test_a_burst_of_bad_tokens_from_one_peer_is_throttled_without_checking_the_token() -> None:
    clock = Clock()
    guard = _guard(clock)
    reasons = [_reason(guard, f"guess-{n:016d}", "10.0.0.7") for n in range(BURST + 3)]
    assert reasons == ["UNAUTHENTICATED"] * BURST + ["AUTH_THROTTLED"] * 3
    with pytest.raises(ServiceError) as throttled:
        guard.authenticate([("authorization", f"Bearer {GOOD_TOKEN}")], "10.0.0.7")
    assert throttled.value.code == Code.RESOURCE_EXHAUSTED
    assert throttled.value.retry_after_seconds is not None
    assert throttled.value.retry_after_seconds >= 1.0
    # another peer is not throttled, neither its good nor its bad tokens
    assert _reason(guard, GOOD_TOKEN, "10.0.0.8") == "OK"
    assert _reason(guard, "guess-x123456789abcdef", "10.0.0.8") == "UNAUTHENTICATED"
    # the bucket refills: one failure per second
    clock.now += 1.0
    assert _reason(guard, GOOD_TOKEN, "10.0.0.7") == "OK"


def test_successful_calls_spend_nothing() -> None:
    guard = _guard(Clock())
    assert {_reason(guard, GOOD_TOKEN, "10.0.0.7") for _ in range(10 * BURST)} == {"OK"}
    assert _reason(guard, "guess-x123456789abcdef", "10.0.0.7") == "UNAUTHENTICATED"


def test_the_interceptor_charges_failures_to_the_peer_host_not_its_port() -> None:
    guard = _guard(Clock())
    interceptor = GuardInterceptor(guard)
    ran: list[str] = []

    async def get(request: object, context: object) -> str:
        ran.append("get")
        return "ok"

    async def scenario() -> list[str]:
        async def continuation(details: object) -> grpc.RpcMethodHandler[Any, Any]:
            return grpc.unary_unary_rpc_method_handler(get)

        handler = await interceptor.intercept_service(continuation, SimpleNamespace(method=METHOD))
        assert handler is not None
        call: Any = handler.unary_unary
        reasons = []
        for port in range(BURST + 2):  # a new connection (source port) for every guess
            try:
                await call(None, FakeContext("guess-x123456789abcdef", f"ipv4:10.0.0.7:{port}"))
            except ServiceError as exc:
                reasons.append(str(exc.reason))
        assert await call(None, FakeContext(GOOD_TOKEN, "ipv4:10.0.0.9:4000")) == "ok"
        return reasons

    reasons = asyncio.run(scenario())
    assert reasons == ["UNAUTHENTICATED"] * BURST + ["AUTH_THROTTLED"] * 2
    assert ran == ["get"]
