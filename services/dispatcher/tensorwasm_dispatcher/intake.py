"""Batch intake: a tenant's batch is admitted (or refused at once), queued fairly, and run.

Admitted batches wait in their tenant's queue; the workers serve the tenants in turn
(`FairScheduler`), so a flooding tenant waits behind itself. The admission slot is
released when the worker is done, not when the caller stops waiting, so a batch whose
caller went away keeps counting until it has really stopped. Every batch runs under a
deadline: the call's, bounded by `max_run_seconds` (a launch that never ends is stopped
waiting for then, and its session ended).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from tensorwasm_common.errors import ResourceExhaustedError
from tensorwasm_common.gpu_batch import Batch, BatchResult

from tensorwasm_dispatcher.accounting import Admission, Ledger, TenantUsage
from tensorwasm_dispatcher.scheduling import FairScheduler


class BatchRunner(Protocol):
    """What runs an admitted batch: the in-process `batch_runner.Dispatcher`, or the
    `workers.WorkerPool` of per-tenant worker processes."""

    ledger: Ledger

    def execute(self, tenant: str, batch: Batch, deadline: float | None = None) -> BatchResult:
        """Runs the batch (blocking); `deadline` is a `time.monotonic()` instant."""


class BatchIntake:
    """Runs tenants' batches under admission and fair scheduling; reports their usage."""

    def __init__(
        self,
        dispatcher: BatchRunner,
        admission: Admission,
        scheduler: FairScheduler,
        *,
        max_run_seconds: float = 300.0,
    ) -> None:
        self._dispatcher = dispatcher
        self._admission = admission
        self._scheduler = scheduler
        self._max_run_seconds = max_run_seconds

    async def execute(
        self, tenant: str, batch: Batch, timeout_seconds: float | None = None
    ) -> BatchResult:
        """Admits `batch`, waits for a worker to run it, and returns its result.

        `timeout_seconds` is what is left of the caller's deadline, queueing included (None:
        none); the run is bounded by it, and by `max_run_seconds` in any case (a worker
        process is stopped at the bound; in process, the backend's wait gives up at it).

        Raises:
            TenantBusyError, DispatcherSaturatedError: refused at once (counted as a
                rejected request of the tenant); the caller should come back later.
            InvalidBatchError: the batch itself is malformed.
        """
        try:
            slot = self._admission.acquire(tenant)
        except ResourceExhaustedError:
            self._dispatcher.ledger.record(tenant, rejected_requests=1)
            raise
        bound = self._max_run_seconds
        deadline = time.monotonic() + min(
            bound, bound if timeout_seconds is None else timeout_seconds
        )
        try:
            future = self._scheduler.submit(
                tenant,
                len(batch.commands),
                lambda: self._dispatcher.execute(tenant, batch, deadline),
            )
        except BaseException:
            slot.release()
            raise
        future.add_done_callback(lambda _: slot.release())
        return await asyncio.wrap_future(future)

    def usage(self, tenant: str) -> TenantUsage:
        """The tenant's usage counters and quota."""
        return self._dispatcher.ledger.usage(tenant)

    def queued(self, tenant: str) -> int:
        """The tenant's batches admitted and waiting for a worker."""
        return self._scheduler.queued(tenant)
