"""Token-bucket rate limits per (token, tenant) and per token, a throttle of failed
authentication per peer address, and concurrency caps per class.

Buckets refill lazily when taken from: `level = min(burst, level + elapsed * qps)`; a call
is admitted when every applicable bucket holds at least one request, and only then is one
taken from each (a rejected call consumes nothing). The retry hint is the time until the
emptiest rejecting bucket holds one request again (at least one second, as the HTTP API's
Retry-After; one hour for a bucket that never refills).

The (token, tenant) layer is primary (defaults: burst 20, 10 qps); the per-token layer is a
backstop, off unless configured. A layer with burst 0 is off; qps 0 with burst > 0 grants
`burst` requests and never refills. Full buckets are forgotten when the map grows past
`max_buckets` (forgetting a full bucket changes nothing), so wildcard tokens cannot grow it
without bound.

Hand-written rather than a cachetools cache: a bucket may only be forgotten once it is full
again (forgetting a partly drained one would hand out a fresh burst), which no LRU or TTL
eviction policy guarantees.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from tensorwasm_gateway.errors import (
    AuthThrottledError,
    ConcurrencyExhaustedError,
    RateLimitedError,
)

NEVER_REFILLS_RETRY_SECONDS = 3600.0
DEFAULT_MAX_BUCKETS = 100_000

Clock = Callable[[], float]


@dataclass(frozen=True)
class BucketConfig:
    """One layer: `burst` requests at most, refilled at `qps` per second; burst 0 is off."""

    qps: float
    burst: int

    @property
    def enabled(self) -> bool:
        """True when the layer limits anything."""
        return self.burst > 0


class Limiter(Protocol):
    """What the guard needs of a rate limiter (this module's, or the shared one)."""

    @property
    def enabled(self) -> bool:
        """True when any layer limits anything."""
        ...

    def take(self, token_id: str, tenant: str) -> None:
        """Takes one request from each applicable bucket, or raises RateLimitedError."""
        ...

    def take_or_defer(self, token_id: str, tenant: str) -> Awaitable[None] | None:
        """`take` for the event loop: None once decided (or raises RateLimitedError), or
        an awaitable that decides without blocking the loop (it may raise the same)."""
        ...


class _Bucket:
    __slots__ = ("level", "stamp")

    def __init__(self, level: float, stamp: float) -> None:
        self.level = level
        self.stamp = stamp


class _Layer:
    def __init__(self, config: BucketConfig, max_buckets: int) -> None:
        self.config = config
        self._buckets: dict[object, _Bucket] = {}
        self._max_buckets = max_buckets

    def holds(self, key: object) -> bool:
        """True when `key` has a bucket (one without is full: never used, or forgotten
        once it refilled)."""
        return key in self._buckets

    def refilled(self, key: object, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_buckets:
                self._forget_full(now)
            bucket = self._buckets[key] = _Bucket(float(self.config.burst), now)
            return bucket
        elapsed = now - bucket.stamp
        if elapsed > 0:
            bucket.level = min(self.config.burst, bucket.level + elapsed * self.config.qps)
            bucket.stamp = now
        return bucket

    def retry_after(self, bucket: _Bucket) -> float:
        if self.config.qps <= 0:
            return NEVER_REFILLS_RETRY_SECONDS
        return max(1.0, math.ceil((1.0 - bucket.level) / self.config.qps))

    def _forget_full(self, now: float) -> None:
        qps, burst = self.config.qps, self.config.burst
        full = [
            key
            for key, b in self._buckets.items()
            if min(burst, b.level + max(0.0, now - b.stamp) * qps) >= burst
        ]
        for key in full:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


class RateLimiter:
    """Admits or rejects calls by (token, tenant) and by token; thread-safe."""

    def __init__(
        self,
        tenant_layer: BucketConfig,
        token_layer: BucketConfig,
        *,
        clock: Clock = time.monotonic,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
    ) -> None:
        self._tenant = _Layer(tenant_layer, max_buckets) if tenant_layer.enabled else None
        self._token = _Layer(token_layer, max_buckets) if token_layer.enabled else None
        self._clock = clock
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """True when any layer limits anything."""
        return self._tenant is not None or self._token is not None

    def bucket_count(self) -> int:
        """How many buckets are held (for tests and metrics)."""
        return sum(len(layer) for layer in (self._tenant, self._token) if layer is not None)

    def take_or_defer(self, token_id: str, tenant: str) -> None:
        """`take`: in memory, it never waits."""
        self.take(token_id, tenant)

    def take(self, token_id: str, tenant: str) -> None:
        """Takes one request from each applicable bucket, or raises RateLimitedError."""
        if self._tenant is None and self._token is None:
            return
        with self._lock:
            now = self._clock()
            tenant_bucket = token_bucket = None
            if self._tenant is not None:
                tenant_bucket = self._tenant.refilled((token_id, tenant), now)
            if self._token is not None:
                token_bucket = self._token.refilled(token_id, now)
            # Every call passes here: the admitted case builds nothing.
            if (tenant_bucket is None or tenant_bucket.level >= 1.0) and (
                token_bucket is None or token_bucket.level >= 1.0
            ):
                if tenant_bucket is not None:
                    tenant_bucket.level -= 1.0
                if token_bucket is not None:
                    token_bucket.level -= 1.0
                return
            empty: list[tuple[str, float]] = []  # (scope, retry after), tenant first
            for scope, layer, bucket in (
                ("tenant", self._tenant, tenant_bucket),
                ("token", self._token, token_bucket),
            ):
                if layer is not None and bucket is not None and bucket.level < 1.0:
                    empty.append((scope, layer.retry_after(bucket)))
        retry = min(after for _, after in empty)
        scope = empty[0][0]
        raise RateLimitedError(
            f"{scope} rate limit exceeded; retry after {retry:g}s",
            metadata={"scope": scope, "tenant": tenant, "token_id": token_id},
            retry_after_seconds=retry,
        )


class AuthFailureThrottle:
    """Slows token guessing: each peer address may fail authentication `burst` times,
    refilled at `qps`; while its bucket is empty its calls are refused before the token is
    even checked. Successful authentications take nothing, and one peer's failures never
    touch another's bucket. Thread-safe; burst 0 turns it off."""

    def __init__(
        self,
        config: BucketConfig,
        *,
        clock: Clock = time.monotonic,
        max_buckets: int = DEFAULT_MAX_BUCKETS,
    ) -> None:
        self._layer = _Layer(config, max_buckets) if config.enabled else None
        self._clock = clock
        self._lock = threading.Lock()

    def check(self, peer: str) -> None:
        """Raises AuthThrottledError while `peer` has no failure left to spend."""
        if self._layer is None:
            return
        with self._lock:
            if not self._layer.holds(peer):  # never failed lately: every call but a guess
                return
            bucket = self._layer.refilled(peer, self._clock())
            if bucket.level >= 1.0:
                return
            retry = self._layer.retry_after(bucket)
        raise AuthThrottledError(
            f"too many failed authentications from this address; retry after {retry:g}s",
            metadata={"peer": peer},
            retry_after_seconds=retry,
        )

    def failed(self, peer: str) -> None:
        """Spends one of `peer`'s failures (its authentication just failed)."""
        if self._layer is None:
            return
        with self._lock:
            bucket = self._layer.refilled(peer, self._clock())
            bucket.level = max(0.0, bucket.level - 1.0)


class ConcurrencyCaps:
    """At most `limits[class]` calls of each class at once; a full class rejects at once.

    The event loop is single-threaded, so plain counters suffice (no await between the
    check and the increment).
    """

    RETRY_AFTER_SECONDS = 1.0

    def __init__(self, limits: dict[str, int]) -> None:
        self._limits = dict(limits)
        self._active = dict.fromkeys(limits, 0)

    def acquire(self, call_class: str) -> None:
        """Takes a slot of the class, or raises ConcurrencyExhaustedError (0: no cap)."""
        limit = self._limits.get(call_class, 0)
        active = self._active.get(call_class, 0)
        if limit and active >= limit:
            raise ConcurrencyExhaustedError(
                f"too many concurrent {call_class} calls (limit {limit}); retry shortly",
                metadata={"call_class": call_class, "limit": str(limit)},
                retry_after_seconds=self.RETRY_AFTER_SECONDS,
            )
        self._active[call_class] = active + 1

    def release(self, call_class: str) -> None:
        """Gives a slot back."""
        self._active[call_class] -= 1

    def active(self, call_class: str) -> int:
        """Calls of the class in flight."""
        return self._active.get(call_class, 0)
