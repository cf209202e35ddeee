"""Token buckets shared by every gateway on one PostgreSQL database, handed out in grants.

The bucket of each (token, tenant) and each token is one `rate_buckets` row, refilled on
the database's clock and debited in one atomic statement; all gateways draw from the same
rows, so together they admit the configured rate, not N times it. To keep the invoke path
cheap a gateway takes a *grant* of several requests at once and spends it locally, going
back to the database only when the grant is spent: one row update per grant instead of per
call. A grant is about 100 ms of the rate (at most an eighth of the burst, at least one
request) and is dropped, unspent, after GRANT_TTL_SECONDS, so no gateway hoards a bucket.

The trade-off: at low rates (the default 10 qps) a grant is one request, so each admitted
call of a rate-limited tenant costs one short transaction (a row update on the database
server), taken inline; at high rates it is one per ~100 ms of traffic.
Requests granted to a gateway that then sees no calls are lost to the others until the
grant expires (at most a grant per gateway and bucket): the limit errs on the safe side.
Calls that the dev mode's missing tokens do not rate-limit never touch the table.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tensorwasm_common.database import Database, Engine

from tensorwasm_gateway.access.ratelimit import (
    NEVER_REFILLS_RETRY_SECONDS,
    BucketConfig,
    Limiter,
    RateLimiter,
)
from tensorwasm_gateway.errors import RateLimitedError

GRANT_SECONDS = 0.1
GRANT_TTL_SECONDS = 1.0

# Refill on the database's clock and take up to `want` whole requests, in one statement:
# the row lock orders concurrent gateways; a new bucket starts full.
_TAKE = """
INSERT INTO rate_buckets AS b (scope, bucket_key, level, stamp_seconds)
VALUES (?, ?, ?, EXTRACT(EPOCH FROM clock_timestamp()))
ON CONFLICT (scope, bucket_key) DO UPDATE SET
    level = LEAST(?, b.level + GREATEST(0, EXTRACT(EPOCH FROM clock_timestamp())
                                            - b.stamp_seconds) * ?),
    stamp_seconds = EXTRACT(EPOCH FROM clock_timestamp())
RETURNING level
"""
_DEBIT = "UPDATE rate_buckets SET level = level - ? WHERE scope = ? AND bucket_key = ?"


@dataclass
class _Grant:
    requests: float
    expires: float


def limiter_for(
    database: Database | None, tenant_layer: BucketConfig, token_layer: BucketConfig
) -> Limiter:
    """The gateway's rate limiter: shared on a PostgreSQL database (every gateway on it
    draws from the same buckets), in memory otherwise (SQLite: one host)."""
    if database is not None and database.engine is Engine.POSTGRESQL:
        return SharedRateLimiter(database, tenant_layer, token_layer)
    return RateLimiter(tenant_layer, token_layer)


class SharedRateLimiter:
    """RateLimiter's `take`, on buckets every gateway on the database shares."""

    def __init__(
        self,
        database: Database,
        tenant_layer: BucketConfig,
        token_layer: BucketConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._database = database
        self._layers = {
            scope: config
            for scope, config in (("tenant", tenant_layer), ("token", token_layer))
            if config.enabled
        }
        self._clock = clock
        self._grants: dict[tuple[str, str], _Grant] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """True when any layer limits anything."""
        return bool(self._layers)

    def bucket_count(self) -> int:
        """How many grants this gateway holds (for tests and metrics)."""
        return len(self._grants)

    def take(self, token_id: str, tenant: str) -> None:
        """Takes one request from each applicable bucket, or raises RateLimitedError
        (a rejected call consumes nothing of what this gateway holds)."""
        if not self._layers:
            return
        keys = {"tenant": f"{token_id}/{tenant}", "token": token_id}
        with self._lock:
            now = self._clock()
            self._forget_expired(now)
            for scope, config in self._layers.items():
                grant = self._grants.get((scope, keys[scope]))
                if grant is None or grant.requests < 1.0:
                    granted, level = self._draw(scope, keys[scope], config)
                    if granted == 0:
                        raise _limited(scope, config, level, tenant, token_id)
                    self._grants[(scope, keys[scope])] = _Grant(
                        (grant.requests if grant else 0.0) + granted, now + GRANT_TTL_SECONDS
                    )
            for scope in self._layers:
                self._grants[(scope, keys[scope])].requests -= 1.0

    def _draw(self, scope: str, key: str, config: BucketConfig) -> tuple[int, float]:
        """Takes a grant from the shared row: (requests granted, level left)."""
        size = max(1, math.floor(min(config.burst / 8, config.qps * GRANT_SECONDS)))
        with self._database.transaction() as session:
            (level,) = session.execute(
                _TAKE, (scope, key, float(config.burst), float(config.burst), config.qps)
            ).rows[0]
            granted = min(size, math.floor(float(level)))
            if granted > 0:
                session.execute(_DEBIT, (float(granted), scope, key))
        return granted, float(level) - granted

    def _forget_expired(self, now: float) -> None:
        expired = [key for key, grant in self._grants.items() if grant.expires <= now]
        for key in expired:
            del self._grants[key]


def _limited(
    scope: str, config: BucketConfig, level: float, tenant: str, token_id: str
) -> RateLimitedError:
    if config.qps <= 0:
        retry = NEVER_REFILLS_RETRY_SECONDS
    else:
        retry = max(1.0, math.ceil((1.0 - level) / config.qps))
    return RateLimitedError(
        f"{scope} rate limit exceeded; retry after {retry:g}s",
        metadata={"scope": scope, "tenant": tenant, "token_id": token_id},
        retry_after_seconds=retry,
    )
