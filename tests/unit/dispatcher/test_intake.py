"""BatchIntake: admission before queueing, rejections counted, slots held until the run ends,
and every batch run under its call's deadline, bounded by `max_run_seconds`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from tensorwasm_common.gpu_abi import AbiError, ArgTag, ScalarArg
from tensorwasm_common.gpu_batch import Batch, LaunchKernel, LoadKernel
from tensorwasm_dispatcher.accounting import Admission, Ledger, TenantBusyError
from tensorwasm_dispatcher.backends import CpuBackend
from tensorwasm_dispatcher.backends.cuda import CudaBackend
from tensorwasm_dispatcher.batch_runner import Dispatcher, InvalidBatchError
from tensorwasm_dispatcher.gpu_sessions import GpuSessionTable
from tensorwasm_dispatcher.intake import BatchIntake
from tensorwasm_dispatcher.scheduling import FairScheduler

from tests.unit.dispatcher.backends.fake_cuda_driver import FakeDriver


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


SPIN_PTX = b".visible .entry spin(\n.param .u32 x\n)\n{\nret;\n}\n"
NOOP_PTX = b".visible .entry noop(\n.param .u32 x\n)\n{\nret;\n}\n"


def _spin_batch(entry: str, ptx: bytes) -> Batch:
    launch = LaunchKernel(0, (1, 1, 1), (1, 1, 1), 0, (ScalarArg(ArgTag.U32, 1),))
    return Batch("s", (), (LoadKernel(0, ptx, entry), launch), end_session=True)


@pytest.mark.parametrize(
    ("timeout_seconds", "max_run_seconds"),
    [(0.0, 300.0), (None, 1e-9), (300.0, 1e-9)],
    ids=["the-calls-deadline", "the-bound-without-a-deadline", "the-bound-before-the-deadline"],
)
def test_a_kernel_that_never_ends_is_stopped_at_the_batchs_deadline(
    timeout_seconds: float | None, max_run_seconds: float
) -> None:
    # The cuda backend over the recording fake of the driver: `spin` never finishes.
    backend = CudaBackend(0, driver=FakeDriver())
    dispatcher = Dispatcher(backend, Ledger(1 << 20), GpuSessionTable(backend, idle_ttl_seconds=60))
    admission = Admission(max_in_flight=4, max_per_tenant=2, retry_after_seconds=0.1)
    scheduler = FairScheduler(1, quantum=8)
    intake = BatchIntake(dispatcher, admission, scheduler, max_run_seconds=max_run_seconds)
    try:
        spun = asyncio.run(intake.execute("t", _spin_batch("spin", SPIN_PTX), timeout_seconds))
        assert [r.code for r in spun.results] == [0, int(AbiError.LAUNCH_FAILED)]
        assert "deadline" in spun.results[1].message
        if max_run_seconds > 1:  # a kernel that ends is not stopped by a deadline to come
            done = asyncio.run(intake.execute("t", _spin_batch("noop", NOOP_PTX), 300.0))
            assert [r.code for r in done.results] == [0, 0]
    finally:
        scheduler.shutdown()
    assert admission.in_flight("t") == 0
