"""Batch intake: a tenant's batch is admitted (or refused at once), queued fairly, and run.

Admitted batches wait in their tenant's queue; the workers serve the tenants in turn
(`FairScheduler`), so a flooding tenant waits behind itself. The admission slot is
released when the worker is done, not when the caller stops waiting, so a batch whose
caller went away keeps counting until it has really stopped.
"""

from __future__ import annotations

import asyncio

from tensorwasm_common.errors import ResourceExhaustedError
from tensorwasm_common.gpu_batch import Batch, BatchResult

from tensorwasm_dispatcher.accounting import Admission, TenantUsage
from tensorwasm_dispatcher.batch_runner import Dispatcher
from tensorwasm_dispatcher.scheduling import FairScheduler


class BatchIntake:
    """Runs tenants' batches under admission and fair scheduling; reports their usage."""

    def __init__(
        self, dispatcher: Dispatcher, admission: Admission, scheduler: FairScheduler
    ) -> None:
        self._dispatcher = dispatcher
        self._admission = admission
        self._scheduler = scheduler

    async def execute(
        self, tenant: str, batch: Batch, *, deadline: float | None = None
    ) -> BatchResult:
        """Admits `batch`, waits for a worker to run it, and returns its result; `deadline`
        (on `time.monotonic()`) is the caller's, which bounds the batch's launches.

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
        try:
            future = self._scheduler.submit(
                tenant,
                len(batch.commands),
                lambda: self._dispatcher.execute(tenant, batch, deadline=deadline),
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
