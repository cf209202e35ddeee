"""The Python clients against a real, rate-limited gateway: typed errors, RetryInfo retries."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm_client.aio import AsyncGatewayClient
from tensorwasm_client.client import GatewayClient
from tensorwasm_client.errors import (
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    TensorWasmError,
    UnauthenticatedError,
    UnavailableError,
)
from tensorwasm_client.retries import NO_RETRIES, RetryPolicy

from tests.integration.conftest import RunningStack, start_stack

pytestmark = pytest.mark.integration

WILDCARD = "wild-client-errors-0123456789"
ACME_ONLY = "acme-client-errors-0123456789"
# A tenant's bucket: 3 calls at once, then 2 a second. Bursts are sent from threads at
# once, so they outrun the refill however slow the machine.
QPS = 2.0
BURST = 3


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = start_stack(
        tmp_path_factory.mktemp("limited"),
        {
            "TENSORWASM_GATEWAY_TOKENS": f"{WILDCARD}:tenant=*;{ACME_ONLY}:tenant=acme",
            "TENSORWASM_GATEWAY_RATE_LIMIT_TENANT_QPS": str(QPS),
            "TENSORWASM_GATEWAY_RATE_LIMIT_TENANT_BURST": str(BURST),
        },
    )
    try:
        yield running
    finally:
        running.stop()


def _client(stack: RunningStack, tenant: str | None, **options: object) -> GatewayClient:
    return GatewayClient(stack.gateway, tenant=tenant, **options)  # type: ignore[arg-type]


def test_each_refusal_is_its_family_with_reason_metadata_and_request_id(
    limited: RunningStack,
) -> None:
    cases = [
        ("e-bad", "not-a-known-token-0123456789", UnauthenticatedError, "UNAUTHENTICATED"),
        ("beta", ACME_ONLY, PermissionDeniedError, "TENANT_SCOPE_DENIED"),
        ("Not A Tenant", WILDCARD, InvalidArgumentError, "INVALID_NAME"),
    ]
    for tenant, token, family, reason in cases:
        with _client(limited, tenant, token=token) as client, pytest.raises(family) as caught:
            client.list_page(10)
        _assert_refusal(caught.value, reason)
    with (
        _client(limited, "e-missing", token=WILDCARD) as client,
        pytest.raises(NotFoundError) as missing,
    ):
        client.get_function("absent")
    _assert_refusal(missing.value, "FUNCTION_NOT_FOUND")
    assert missing.value.metadata, "the ErrorInfo metadata was not decoded"


def _assert_refusal(error: TensorWasmError, reason: str) -> None:
    assert error.reason == reason, error
    assert error.domain.endswith(".tensorwasm.dev"), error.domain
    assert len(error.request_id) >= 8, error.request_id  # the gateway saw the call
    assert error.retry_after is None


def test_a_burst_is_refused_with_retry_info_without_retries_and_absorbed_with_them(
    limited: RunningStack,
) -> None:
    with _client(limited, "e-burst-raw", token=WILDCARD, retry=NO_RETRIES) as raw:
        outcomes = _burst(lambda: raw.list_page(10))
    refused = [outcome for outcome in outcomes if isinstance(outcome, RateLimitedError)]
    assert refused, "a burst past the bucket was never refused"
    assert all(isinstance(o, RateLimitedError | pb.ListFunctionsResponse) for o in outcomes)
    for exc in refused:
        assert exc.code == "RESOURCE_EXHAUSTED" and exc.reason == "RATE_LIMITED"
        # The gateway states whole seconds (at least one), as the original did.
        assert exc.retry_after is not None and 0 < exc.retry_after <= 1.0
        assert exc.request_id

    # The same burst with the default policy: every call succeeds, the waits are the
    # gateway's RetryInfo delays.
    with _client(limited, "e-burst-retried", token=WILDCARD) as patient:
        pages = [patient.list_page(10) for _ in range(3 * BURST)]
    assert len(pages) == 3 * BURST


def test_a_retry_info_longer_than_the_policy_allows_is_raised_at_once(
    limited: RunningStack,
) -> None:
    impatient = RetryPolicy(max_delay_seconds=0.001)
    with _client(limited, "e-impatient", token=WILDCARD, retry=impatient) as client:
        outcomes = _burst(lambda: client.list_page(10))
    refused = [outcome for outcome in outcomes if isinstance(outcome, RateLimitedError)]
    assert refused, "the policy waited for a RetryInfo longer than it allows"
    assert all(r.retry_after is not None and r.retry_after > 0.001 for r in refused)


def _burst(call: Callable[[], object]) -> list[object]:
    """3 x BURST calls at once: each one's response or error."""

    def outcome() -> object:
        try:
            return call()
        except TensorWasmError as exc:
            return exc

    with ThreadPoolExecutor(3 * BURST) as pool:
        return list(pool.map(lambda _: outcome(), range(3 * BURST)))


def test_the_asyncio_client_deploys_invokes_streams_and_retries(
    limited: RunningStack, wasm: Callable[[str], bytes]
) -> None:
    async def scenario() -> None:
        async with AsyncGatewayClient(limited.gateway, tenant="e-async", token=WILDCARD) as client:
            function = await client.create_function("add", wasm("add"))
            assert function.name == "functions/add"
            # More concurrent invokes than the bucket holds: retried until all succeed.
            responses = await asyncio.gather(
                *(client.invoke("add", "add", [Value(i32=n), Value(i32=1)]) for n in range(8))
            )
            assert [r.outcome.success.results[0].i32 for r in responses] == list(range(1, 9))
            events = [
                event
                async for event in client.invoke_stream("add", "add", [Value(i32=2), Value(i32=3)])
            ]
            assert events[-1].outcome.success.results[0].i32 == 5
            assert [f.name async for f in client.list_functions()] == ["functions/add"]
            with pytest.raises(NotFoundError) as caught:
                await client.get_function("absent")
            assert caught.value.reason == "FUNCTION_NOT_FOUND"

    asyncio.run(scenario())


def test_an_unreachable_gateway_is_unavailable_after_the_policy_s_attempts() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    policy = RetryPolicy(max_attempts=3, backoff_seconds=0.01)
    with (
        GatewayClient(f"127.0.0.1:{port}", retry=policy) as client,
        pytest.raises(UnavailableError) as caught,
    ):
        client.get_function("any")
    assert caught.value.request_id == ""  # never reached a gateway
    assert caught.value.not_sent
    assert policy.retryable(caught.value)
