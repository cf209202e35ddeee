"""BatchIntake: admission before queueing, rejections counted, slots held until the run ends."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from tensorwasm_common.gpu_batch import Batch
from tensorwasm_dispatcher.accounting import Admission, Ledger, TenantBusyError
from tensorwasm_dispatcher.backends import CpuBackend
from tensorwasm_dispatcher.batch_runner import Dispatcher, InvalidBatchError
from tensorwasm_dispatcher.gpu_sessions import GpuSessionTable
from tensorwasm_dispatcher.intake import BatchIntake
from tensorwasm_dispatcher.scheduling import FairScheduler


@pytest.fixture
def parts() -> Iterator[tuple[Dispatcher, Admission, FairScheduler]]:
    backend = CpuBackend()
    dispatcher = Dispatcher(backend, Ledger(1 << 20), GpuSessionTable(backend, idle_ttl_seconds=60))
    admission = Admission(max_in_flight=4, max_per_tenant=1, retry_after_seconds=0.1)
    scheduler = FairScheduler(1, quantum=8)
    yield dispatcher, admission, scheduler
    scheduler.shutdown()


def test_a_batch_runs_and_releases_its_slot(
    parts: tuple[Dispatcher, Admission, FairScheduler],
) -> None:
    dispatcher, admission, scheduler = parts
    intake = BatchIntake(dispatcher, admission, scheduler)
    result = asyncio.run(intake.execute("t", Batch("s", (), (), end_session=True)))
    assert result.results == ()
    assert admission.in_flight("t") == 0
    assert intake.usage("t").execute_requests == 1
    assert intake.queued("t") == 0


def test_a_busy_tenant_is_refused_and_counted(
    parts: tuple[Dispatcher, Admission, FairScheduler],
) -> None:
    dispatcher, admission, scheduler = parts
    intake = BatchIntake(dispatcher, admission, scheduler)
    held = admission.acquire("t")  # the tenant's one request in flight
    with pytest.raises(TenantBusyError):
        asyncio.run(intake.execute("t", Batch("s", (), ())))
    held.release()
    assert intake.usage("t").rejected_requests == 1
    assert admission.in_flight("t") == 0


def test_a_malformed_batch_fails_and_frees_its_slot(
    parts: tuple[Dispatcher, Admission, FairScheduler],
) -> None:
    dispatcher, admission, scheduler = parts
    intake = BatchIntake(dispatcher, admission, scheduler)
    with pytest.raises(InvalidBatchError):
        asyncio.run(intake.execute("t", Batch("", (), ())))
    assert admission.in_flight("t") == 0
