"""Releasing a function's reference to its module in the snapshot store, reliably.

A deploy takes the tenant's reference `functions/{id}` as it stores the module, before
an executor compiles it; a failed deploy and a deleted function release it. When the
store cannot take the release (it is down, or the caller went away mid-release), the
release is recorded durably in the gateway's database and retried in the background
until the store takes it: a reference nobody releases would keep the module charged to
the tenant's quota for ever (nothing else can remove it: no function names it).

A recorded release is dropped instead of sent when the reference is live again (the
tenant deployed a function of that id with that module since), and a deploy adopts a
recorded release of the reference it is about to take. Within this gateway a
per-reference lock keeps a retry from racing a deploy of the same reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator
from typing import Protocol

from prometheus_client import Gauge
from tensorwasm_common.errors import ServiceError

from tensorwasm_gateway.errors import FunctionNotFoundError
from tensorwasm_gateway.functions.registry import Registry

_log = logging.getLogger(__name__)
_BATCH = 100

PENDING_RELEASES = Gauge(
    "tensorwasm_gateway_pending_releases",
    "Module references the store could not release yet (retried in the background).",
)


class ReferenceRemover(Protocol):
    """What releasing needs of the snapshot store."""

    async def remove_ref(self, digest: str, ref_name: str, *, tenant: str | None = None) -> bool:
        """Removes the tenant's reference `ref_name` to `digest` (idempotent)."""
        ...


Key = tuple[str, str, str]  # (tenant, digest, reference)


class References:
    """Releases references now, else records them and retries until the store takes them."""

    def __init__(self, registry: Registry, store: ReferenceRemover) -> None:
        self._registry = registry
        self._store = store
        self._locks: weakref.WeakValueDictionary[Key, asyncio.Lock] = weakref.WeakValueDictionary()
        self._retrier: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def taking(self, tenant: str, digest: str, reference: str) -> AsyncIterator[None]:
        """Held while a deploy takes `reference`: a recorded release of it is the
        deploy's to decide now (it releases again if it fails)."""
        async with self._lock((tenant, digest, reference)):
            await asyncio.to_thread(self._forget, tenant, digest, reference)
            yield

    async def release(self, tenant: str, digest: str, reference: str) -> None:
        """Removes the tenant's reference now; when the store cannot take it, records
        it for the background retry (never raises a store error)."""
        try:
            await self._store.remove_ref(digest, reference, tenant=tenant)
        except (ServiceError, asyncio.CancelledError) as exc:
            _log.warning(
                "could not release reference %s to %s now (%s); recorded for retry",
                reference, digest, exc or "cancelled", extra={"tenant": tenant},
            )  # fmt: skip
            await asyncio.shield(asyncio.to_thread(self._record, tenant, digest, reference))
            if isinstance(exc, asyncio.CancelledError):
                raise

    async def retry_pending(self) -> int:
        """Sends the recorded releases once; returns how many were settled (sent, or
        dropped because their reference is live again)."""
        settled = 0
        for tenant, digest, reference in await asyncio.to_thread(self.pending):
            async with self._lock((tenant, digest, reference)):
                if await asyncio.to_thread(self._live, tenant, digest, reference):
                    _log.info("reference %s is live again; release dropped", reference)
                else:
                    try:
                        await self._store.remove_ref(digest, reference, tenant=tenant)
                    except ServiceError:
                        break  # the store is still away: try again at the next round
                await asyncio.to_thread(self._forget, tenant, digest, reference)
                settled += 1
        return settled

    def start(self, interval_seconds: float) -> None:
        """Retries the recorded releases every `interval_seconds` in the background."""

        async def retry() -> None:
            while True:
                try:
                    await self.retry_pending()
                except Exception:  # a busy database: try again next round
                    _log.exception("retrying reference releases failed")
                await asyncio.sleep(interval_seconds)

        self._retrier = asyncio.create_task(retry())

    async def close(self) -> None:
        """Stops the background retry (what is recorded stays for the next start)."""
        if self._retrier is not None:
            self._retrier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrier

    def pending(self) -> list[Key]:
        """The recorded releases, oldest first (at most a batch)."""
        with self._registry.database.transaction() as session:
            rows = session.execute(
                "SELECT tenant, digest, ref_name FROM pending_releases ORDER BY since_ns LIMIT ?",
                (_BATCH,),
            ).rows
            (count,) = session.execute("SELECT COUNT(*) FROM pending_releases").rows[0]
        PENDING_RELEASES.set(count)
        return [(str(t), str(d), str(r)) for t, d, r in rows]

    def _lock(self, key: Key) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def _record(self, tenant: str, digest: str, reference: str) -> None:
        cursor = self._registry.database.execute(
            "INSERT INTO pending_releases VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (tenant, digest, reference, time.time_ns()),
        )
        if cursor.rowcount:
            PENDING_RELEASES.inc()

    def _forget(self, tenant: str, digest: str, reference: str) -> None:
        self._registry.database.execute(
            "DELETE FROM pending_releases WHERE tenant = ? AND digest = ? AND ref_name = ?",
            (tenant, digest, reference),
        )

    def _live(self, tenant: str, digest: str, reference: str) -> bool:
        """True when a function of the tenant holds `reference` to `digest` again."""
        prefix, _, function_id = reference.partition("/")
        if prefix != "functions":
            return False
        try:
            return self._registry.get(tenant, function_id).module_digest == digest
        except FunctionNotFoundError:
            return False
