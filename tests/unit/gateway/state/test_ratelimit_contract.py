"""Rate limits on each engine's limiter: a bucket admits its burst, then rejects with a
retry hint; on PostgreSQL two gateways together admit the burst, not twice it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import pytest
from tensorwasm_common.database import (
    Database,
    DatabaseUnavailableError,
    Engine,
    parse_database_url,
)
from tensorwasm_gateway.access import BucketConfig, SharedRateLimiter, limiter_for
from tensorwasm_gateway.access.ratelimit import NEVER_REFILLS_RETRY_SECONDS, Limiter
from tensorwasm_gateway.errors import RateLimitedError
from tensorwasm_gateway.state import open_database
from tensorwasm_gateway.state.open import SETTING

OFF = BucketConfig(0, 0)


def _admitted(limiter: Limiter, calls: int, tenant: str = "acme") -> int:
    admitted = 0
    for _ in range(calls):
        try:
            limiter.take("tok", tenant)
        except RateLimitedError:
            continue
        admitted += 1
    return admitted


def _open(url: str) -> Database:
    return open_database(parse_database_url(url, SETTING))


def test_a_bucket_admits_its_burst_then_asks_to_come_back(database_url: str) -> None:
    database = _open(database_url)
    try:
        limiter = limiter_for(database, BucketConfig(qps=0, burst=5), OFF)
        assert limiter.enabled
        assert _admitted(limiter, 12) == 5
        with pytest.raises(RateLimitedError) as caught:
            limiter.take("tok", "acme")
        assert caught.value.retry_after_seconds == NEVER_REFILLS_RETRY_SECONDS
        assert caught.value.metadata["scope"] == "tenant"
        assert _admitted(limiter, 3, tenant="other") == 3  # buckets are per (token, tenant)
    finally:
        database.close()


def test_the_token_layer_backs_up_the_tenant_layer(database_url: str) -> None:
    database = _open(database_url)
    try:
        limiter = limiter_for(database, BucketConfig(qps=0, burst=10), BucketConfig(qps=0, burst=4))
        assert _admitted(limiter, 3, tenant="a") + _admitted(limiter, 3, tenant="b") == 4
    finally:
        database.close()


def test_two_gateways_on_postgres_together_admit_the_burst(postgres_url: str) -> None:
    first, second = _open(postgres_url), _open(postgres_url)
    try:
        assert first.engine is Engine.POSTGRESQL
        config = BucketConfig(qps=0, burst=40)
        a, b = limiter_for(first, config, OFF), limiter_for(second, config, OFF)
        admitted = 0
        for _ in range(60):  # alternating, as a load balancer would spread them
            admitted += _admitted(a, 1) + _admitted(b, 1)
        assert admitted == 40
    finally:
        first.close()
        second.close()


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_empty_shared_bucket_refuses_without_the_database_until_it_refills(
    postgres_url: str,
) -> None:
    database = _open(postgres_url)
    clock = _Clock()
    limiter = SharedRateLimiter(database, BucketConfig(qps=1, burst=2), OFF, clock=clock)
    try:
        assert _admitted(limiter, 2) == 2
        with pytest.raises(RateLimitedError):
            limiter.take("tok", "acme")  # asks the database: empty, marked until it refills
    finally:
        database.close()
    # Refused from the mark: the closed database is not asked.
    with pytest.raises(RateLimitedError) as caught:
        limiter.take("tok", "acme")
    assert caught.value.retry_after_seconds == 1
    clock.now += 1.0  # one request refilled: the database is asked again
    with pytest.raises(DatabaseUnavailableError):
        limiter.take("tok", "acme")


def test_a_refusal_from_the_empty_mark_counts_down_its_retry_hint(postgres_url: str) -> None:
    database = _open(postgres_url)
    clock = _Clock()
    limiter = SharedRateLimiter(database, BucketConfig(qps=0.1, burst=1), OFF, clock=clock)
    try:
        assert _admitted(limiter, 1) == 1
        with pytest.raises(RateLimitedError) as first:
            limiter.take("tok", "acme")
        clock.now += 6.0
        with pytest.raises(RateLimitedError) as later:
            limiter.take("tok", "acme")
    finally:
        database.close()
    assert first.value.retry_after_seconds == 10  # a whole request at 0.1/s
    assert 1 <= later.value.retry_after_seconds <= 4


def test_the_shared_limiter_never_asks_the_database_on_the_callers_thread(
    postgres_url: str,
) -> None:
    """`take_or_defer` decides from the grants held here, or hands back the draw to await
    (on a worker thread): the event loop never waits for the database."""
    database = _open(postgres_url)
    limiter = SharedRateLimiter(database, BucketConfig(qps=100, burst=40), OFF)
    try:
        first = limiter.take_or_defer("tok", "acme")
        assert first is not None  # no grant yet: a draw to await
        asyncio.run(_awaited(first))
        # A grant of 40 / 8 = 5 requests was drawn, one spent: four more decide at once.
        assert [limiter.take_or_defer("tok", "acme") for _ in range(4)] == [None] * 4
    finally:
        database.close()
    cold = limiter.take_or_defer("tok", "other")  # the database is gone: not asked here
    assert cold is not None
    with pytest.raises(DatabaseUnavailableError):
        asyncio.run(_awaited(cold))


async def _awaited(pending: Awaitable[None]) -> None:
    await pending


def test_a_spent_grant_is_drawn_again_ahead_of_the_next_call(postgres_url: str) -> None:
    """At a low rate a grant is one request: the call that spends it starts drawing the
    next, so the tenant's next call is decided from what is held, until the bucket is
    empty; then it is refused from the mark, and the total stays the burst."""
    database = _open(postgres_url)
    limiter = SharedRateLimiter(database, BucketConfig(qps=0, burst=3), OFF)

    async def settled() -> None:
        give_up = time.monotonic() + 30
        while limiter.refills_in_flight():
            assert time.monotonic() < give_up, "the grant was never drawn"
            await asyncio.sleep(0.01)

    async def scenario() -> list[str]:
        decided = []
        first = limiter.take_or_defer("tok", "acme")
        assert first is not None  # nothing held yet: drawn for this call
        await first
        for _ in range(3):
            await settled()
            try:
                pending = limiter.take_or_defer("tok", "acme")
            except RateLimitedError:
                decided.append("refused")
                continue
            decided.append("admitted" if pending is None else "deferred")
            if pending is not None:
                await pending
        return decided

    try:
        assert asyncio.run(scenario()) == ["admitted", "admitted", "refused"]
    finally:
        database.close()
