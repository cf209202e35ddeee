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
server); at high rates it is one per ~100 ms of traffic. The guard takes grants with
`take_or_defer`: a call that its gateway's grants decide costs no I/O, and one that needs
the database draws on a worker thread, so no transaction ever blocks the event loop (and
with it every other tenant's calls). A call that spends a grant starts drawing the next
one at once, so at a steady rate a tenant's calls find their grant held and wait for no
transaction; the price is at most one more grant per gateway and bucket held ahead.
Requests granted to a gateway that then sees no calls are lost to the others until the
grant expires (at most a grant per gateway and bucket): the limit errs on the safe side.
A bucket found empty is marked so until it refills a whole request (its level only grows
with time, whoever draws from it), and calls are refused locally until then: a tenant over
its limit costs the database one transaction per refill, not one per refused call.
Calls that the dev mode's missing tokens do not rate-limit never touch the table.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable
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


@dataclass(frozen=True)
class _Empty:
    """A bucket found empty: no gateway can be granted a request from it before `until`
    (its level refills at the configured rate, and grants only take from it), so calls
    are refused here until then without asking the database again."""

    until: float
    level: float


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
        self._empty: dict[tuple[str, str], _Empty] = {}
        # Expired grants and empty marks are dropped when found, and swept at most once a
        # grant TTL (not on every call: a gateway may hold thousands).
        self._next_sweep = 0.0
        self._lock = threading.Lock()
        # Grants being drawn ahead of need, by bucket (touched on the event loop only).
        self._refilling: dict[tuple[str, str], asyncio.Future[None]] = {}

    @property
    def enabled(self) -> bool:
        """True when any layer limits anything."""
        return bool(self._layers)

    def bucket_count(self) -> int:
        """How many grants this gateway holds (for tests and metrics)."""
        return len(self._grants)

    def refills_in_flight(self) -> int:
        """Grants being drawn ahead of need now (for tests)."""
        return len(self._refilling)

    def take(self, token_id: str, tenant: str) -> None:
        """Takes one request from each applicable bucket, or raises RateLimitedError
        (a rejected call consumes nothing of what this gateway holds). Blocks for the
        database when a grant must be drawn: on the event loop use `take_or_defer`."""
        while True:
            missing, _ = self._take_held(token_id, tenant)
            if not missing:
                return
            for scope, key, config in missing:
                self._draw_grant(scope, key, config, tenant, token_id)

    def take_or_defer(self, token_id: str, tenant: str) -> Awaitable[None] | None:
        """`take` on the event loop, never blocking it: None when the grants held here
        decided (admitted, or refused from an empty mark), else an awaitable that waits for
        the grant being drawn ahead, or draws one on a worker thread, and then decides.

        A call that spends a bucket's grant starts drawing the next one on a worker thread,
        so a tenant's next call finds it held (a grant is kept `GRANT_TTL_SECONDS`).
        """
        missing, spent = self._take_held(token_id, tenant)
        for bucket in spent:
            self._refill(*bucket)
        if not missing:
            return None
        drawing = [self._refilling[(s, k)] for s, k, _ in missing if (s, k) in self._refilling]
        return self._decide_after(token_id, tenant, missing, drawing)

    async def _decide_after(
        self,
        token_id: str,
        tenant: str,
        missing: list[tuple[str, str, BucketConfig]],
        drawing: list[asyncio.Future[None]],
    ) -> None:
        if drawing:  # the grants are on their way: wait for them rather than draw again
            await asyncio.wait(drawing)
        else:
            for scope, key, config in missing:
                await asyncio.to_thread(self._draw_grant, scope, key, config, tenant, token_id)
        decided = self.take_or_defer(token_id, tenant)
        if decided is not None:  # spent meanwhile by other calls, or the draw came back empty
            await decided

    def _refill(self, scope: str, key: str, config: BucketConfig) -> None:
        """Starts drawing the next grant of a bucket on a worker thread (once at a time);
        a failure is left for the next call that needs the grant to meet."""
        bucket = (scope, key)
        if bucket in self._refilling:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called off an event loop (a test): its next call draws
            return
        future = loop.run_in_executor(None, self._refill_now, scope, key, config)
        self._refilling[bucket] = future

        def done(finished: asyncio.Future[None]) -> None:
            del self._refilling[bucket]
            if not finished.cancelled():
                finished.exception()  # retrieved: the next call draws and meets it itself

        future.add_done_callback(done)

    def _refill_now(self, scope: str, key: str, config: BucketConfig) -> None:
        self._hold(scope, key, config, *self._draw(scope, key, config))

    def _take_held(
        self, token_id: str, tenant: str
    ) -> tuple[list[tuple[str, str, BucketConfig]], list[tuple[str, str, BucketConfig]]]:
        """Takes one request from each bucket's grant if every one holds a request; returns
        the buckets to draw a grant for (then nothing was taken) and those whose grant this
        call spent.

        Raises:
            RateLimitedError: a bucket without a grant is marked empty.
        """
        if not self._layers:
            return [], []
        keys = {"tenant": f"{token_id}/{tenant}", "token": token_id}
        missing: list[tuple[str, str, BucketConfig]] = []
        spent: list[tuple[str, str, BucketConfig]] = []
        with self._lock:
            now = self._clock()
            if now >= self._next_sweep:
                self._forget_expired(now)
                self._next_sweep = now + GRANT_TTL_SECONDS
            for scope, config in self._layers.items():
                bucket = (scope, keys[scope])
                grant = self._grants.get(bucket)
                if grant is not None and grant.expires <= now:
                    del self._grants[bucket]
                    grant = None
                if grant is None or grant.requests < 1.0:
                    empty = self._empty.get(bucket)
                    if empty is not None and now < empty.until:
                        wait = empty.until - now
                        raise _limited(scope, config, empty.level, tenant, token_id, wait=wait)
                    missing.append((scope, keys[scope], config))
            if not missing:
                for scope, config in self._layers.items():
                    grant = self._grants[(scope, keys[scope])]
                    grant.requests -= 1.0
                    if grant.requests < 1.0:
                        spent.append((scope, keys[scope], config))
        return missing, spent

    def _draw_grant(
        self, scope: str, key: str, config: BucketConfig, tenant: str, token_id: str
    ) -> None:
        """Draws a grant for one bucket from the database (outside the lock, so other
        calls' held grants are spent meanwhile) and adds it to what is held, or marks the
        bucket empty and raises RateLimitedError."""
        granted, level = self._draw(scope, key, config)
        if not self._hold(scope, key, config, granted, level):
            raise _limited(scope, config, level, tenant, token_id)

    def _hold(self, scope: str, key: str, config: BucketConfig, granted: int, level: float) -> bool:
        """Adds a drawn grant to what is held; False (the bucket marked empty until it
        refills) when the draw granted nothing."""
        bucket = (scope, key)
        with self._lock:
            now = self._clock()
            if granted == 0:
                self._empty[bucket] = _Empty(now + _refill_seconds(config, level), level)
                return False
            self._empty.pop(bucket, None)
            grant = self._grants.get(bucket)
            held = grant.requests if grant is not None and grant.expires > now else 0.0
            self._grants[bucket] = _Grant(held + granted, now + GRANT_TTL_SECONDS)
            return True

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
        refilled = [key for key, empty in self._empty.items() if empty.until <= now]
        for key in refilled:
            del self._empty[key]


def _refill_seconds(config: BucketConfig, level: float) -> float:
    """How long a bucket at `level` (< 1) takes to hold one whole request again."""
    if config.qps <= 0:
        return math.inf
    return (1.0 - level) / config.qps


def _limited(
    scope: str,
    config: BucketConfig,
    level: float,
    tenant: str,
    token_id: str,
    *,
    wait: float | None = None,
) -> RateLimitedError:
    """The refusal: `wait` is how long until the bucket holds a request again (default:
    from `level`)."""
    if config.qps <= 0:
        retry = NEVER_REFILLS_RETRY_SECONDS
    else:
        refill = (1.0 - level) / config.qps if wait is None else wait
        retry = max(1.0, math.ceil(refill))
    return RateLimitedError(
        f"{scope} rate limit exceeded; retry after {retry:g}s",
        metadata={"scope": scope, "tenant": tenant, "token_id": token_id},
        retry_after_seconds=retry,
    )
