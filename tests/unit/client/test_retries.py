"""Unit tests for tensorwasm_client.retries: which refusals are retried, and after how long."""

from __future__ import annotations

import pytest
from tensorwasm_client.errors import (
    InvalidArgumentError,
    RateLimitedError,
    ResourceExhaustedError,
    TensorWasmError,
    UnavailableError,
)
from tensorwasm_client.retries import RetryPolicy

POLICY = RetryPolicy(max_delay_seconds=5.0, backoff_seconds=0.1)


NOT_SENT = "failed to connect to all addresses; last error: ..."
RELAYED_UNAVAILABLE = UnavailableError(
    "UNAVAILABLE", "UPSTREAM_UNAVAILABLE", "", retry_after=1.0, request_id="r1"
)


@pytest.mark.parametrize(
    ("error", "idempotent", "retried"),
    [
        (RateLimitedError("RESOURCE_EXHAUSTED", "RATE_LIMITED", "", retry_after=1.0), False, True),
        # Longer than the policy waits: raised, with its retry_after for the caller.
        (RateLimitedError("RESOURCE_EXHAUSTED", "RATE_LIMITED", "", retry_after=9.0), True, False),
        # A limit with no time to come back (e.g. a size) is not a rate limit.
        (ResourceExhaustedError("RESOURCE_EXHAUSTED", "TOO_LARGE", ""), True, False),
        # gRPC could not connect: no byte was sent, whatever the call.
        (UnavailableError("UNAVAILABLE", "UNAVAILABLE", NOT_SENT, not_sent=True), False, True),
        # The gateway relayed an executor failure: it may have come after the guest ran.
        (RELAYED_UNAVAILABLE, False, False),
        (RELAYED_UNAVAILABLE, True, True),
        # Cut off mid-call without a status: never retried, even a read without RetryInfo.
        (UnavailableError("UNAVAILABLE", "UNAVAILABLE", "Socket closed"), True, False),
        (
            InvalidArgumentError("INVALID_ARGUMENT", "INVALID_NAME", "", request_id="r2"),
            True,
            False,
        ),
        (ValueError("not a gateway error"), True, False),
    ],
)
def test_which_refusals_are_retried(error: BaseException, idempotent: bool, retried: bool) -> None:
    assert POLICY.retryable(error, idempotent=idempotent) is retried


def test_the_wait_is_the_retry_info_else_a_doubling_backoff() -> None:
    limited = TensorWasmError("RESOURCE_EXHAUSTED", "RATE_LIMITED", "", retry_after=0.75)
    assert POLICY.delay(limited, 1) == 0.75
    assert POLICY.delay(limited, 4) == 0.75
    unreached = UnavailableError("UNAVAILABLE", "UNAVAILABLE", "")
    assert [POLICY.delay(unreached, n) for n in (1, 2, 3)] == pytest.approx([0.1, 0.2, 0.4])
    assert POLICY.delay(unreached, 20) == 5.0
