"""Token buckets with an injected clock, and concurrency caps."""

from __future__ import annotations

import pytest
from tensorwasm_gateway.access.ratelimit import (
    NEVER_REFILLS_RETRY_SECONDS,
    BucketConfig,
    ConcurrencyCaps,
    RateLimiter,
)
from tensorwasm_gateway.errors import ConcurrencyExhaustedError, RateLimitedError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _admitted(limiter: RateLimiter, calls: int, token: str = "t", tenant: str = "a") -> int:
    admitted = 0
    for _ in range(calls):
        try:
            limiter.take(token, tenant)
            admitted += 1
        except RateLimitedError:
            pass
    return admitted


def test_burst_then_refill_at_qps() -> None:
    clock = FakeClock()
    limiter = RateLimiter(BucketConfig(qps=10, burst=20), BucketConfig(0, 0), clock=clock)
    assert _admitted(limiter, 25) == 20
    clock.now += 0.5  # 5 requests refilled
    assert _admitted(limiter, 10) == 5
    clock.now += 100  # refill never exceeds the burst
    assert _admitted(limiter, 30) == 20


def test_rejection_carries_retry_and_scope() -> None:
    clock = FakeClock()
    limiter = RateLimiter(BucketConfig(qps=0.25, burst=1), BucketConfig(0, 0), clock=clock)
    limiter.take("t", "a")
    with pytest.raises(RateLimitedError) as caught:
        limiter.take("t", "a")
    assert caught.value.retry_after_seconds == 4  # (1 - 0) / 0.25
    assert caught.value.metadata["scope"] == "tenant"
    assert caught.value.reason == "RATE_LIMITED"
    clock.now += 0.1
    with pytest.raises(RateLimitedError) as again:
        limiter.take("t", "a")
    assert again.value.retry_after_seconds == 4  # ceil((1 - 0.025) / 0.25)


def test_retry_is_at_least_one_second() -> None:
    limiter = RateLimiter(BucketConfig(qps=1000, burst=1), BucketConfig(0, 0), clock=FakeClock())
    limiter.take("t", "a")
    with pytest.raises(RateLimitedError) as caught:
        limiter.take("t", "a")
    assert caught.value.retry_after_seconds == 1


def test_buckets_are_per_token_and_tenant() -> None:
    limiter = RateLimiter(BucketConfig(qps=0, burst=2), BucketConfig(0, 0), clock=FakeClock())
    assert _admitted(limiter, 5, "t", "a") == 2
    assert _admitted(limiter, 5, "t", "b") == 2
    assert _admitted(limiter, 5, "u", "a") == 2


def test_token_backstop_spans_tenants_and_rejection_consumes_nothing() -> None:
    clock = FakeClock()
    limiter = RateLimiter(BucketConfig(qps=0, burst=3), BucketConfig(qps=1, burst=4), clock=clock)
    assert _admitted(limiter, 3, "t", "a") == 3
    # Tenant a's bucket is empty: the rejected calls must not drain the token bucket.
    assert _admitted(limiter, 10, "t", "a") == 0
    assert _admitted(limiter, 10, "t", "b") == 1  # token layer: 4 - 3
    with pytest.raises(RateLimitedError) as caught:
        limiter.take("t", "c")
    assert caught.value.metadata["scope"] == "token"
    assert caught.value.retry_after_seconds == 1


def test_never_refilling_bucket_hints_an_hour() -> None:
    limiter = RateLimiter(BucketConfig(qps=0, burst=1), BucketConfig(0, 0), clock=FakeClock())
    limiter.take("t", "a")
    with pytest.raises(RateLimitedError) as caught:
        limiter.take("t", "a")
    assert caught.value.retry_after_seconds == NEVER_REFILLS_RETRY_SECONDS


def test_disabled_layers_admit_everything() -> None:
    limiter = RateLimiter(BucketConfig(10, 0), BucketConfig(0, 0), clock=FakeClock())
    assert not limiter.enabled
    assert _admitted(limiter, 1000) == 1000


def test_full_buckets_are_forgotten_past_the_cap() -> None:
    clock = FakeClock()
    limiter = RateLimiter(
        BucketConfig(qps=1, burst=2), BucketConfig(0, 0), clock=clock, max_buckets=10
    )
    for i in range(10):
        limiter.take("t", f"tenant-{i}")
    clock.now += 5  # every bucket is full again
    limiter.take("t", "new")
    assert limiter.bucket_count() == 1
    # A bucket that is not full is kept: its state matters.
    for i in range(9):
        limiter.take("t", f"other-{i}")
    limiter.take("t", "one-more")
    assert limiter.bucket_count() == 11


def test_concurrency_caps() -> None:
    caps = ConcurrencyCaps({"invoke": 2, "write": 0})
    caps.acquire("invoke")
    caps.acquire("invoke")
    with pytest.raises(ConcurrencyExhaustedError) as caught:
        caps.acquire("invoke")
    assert caught.value.metadata == {"call_class": "invoke", "limit": "2"}
    assert caught.value.retry_after_seconds is not None
    caps.release("invoke")
    caps.acquire("invoke")
    for _ in range(100):  # 0: no cap
        caps.acquire("write")
    assert caps.active("write") == 100
