"""Rate limits on each engine's limiter: a bucket admits its burst, then rejects with a
retry hint; on PostgreSQL two gateways together admit the burst, not twice it."""

from __future__ import annotations

import pytest
from tensorwasm_common.database import Database, Engine, parse_database_url
from tensorwasm_gateway.access import BucketConfig, limiter_for
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
