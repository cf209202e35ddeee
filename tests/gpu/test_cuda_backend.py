"""GPU tests of the dispatcher's cuda backend: batches through `Dispatcher.execute` on a
device match the cpu backend (the NumPy references), and its ABI codes hold.

Run on a machine with an NVIDIA device: `pytest -m gpu tests/gpu`. The backend imports
`cuda` when it is created, inside the fixture, so collecting this file needs no driver.
"""

from __future__ import annotations

import numpy as np
import pytest
from tensorwasm_common.gpu_abi import AbiError, ArgTag, BufferRef, ScalarArg
from tensorwasm_common.gpu_batch import Batch, LaunchKernel, LoadKernel, StagedRegion
from tensorwasm_dispatcher.accounting import Ledger
from tensorwasm_dispatcher.backends.base import Backend
from tensorwasm_dispatcher.backends.cpu import CpuBackend
from tensorwasm_dispatcher.batch_runner import Dispatcher
from tensorwasm_dispatcher.gpu_sessions import GpuSessionTable
from tensorwasm_kernels import CATALOG

pytestmark = pytest.mark.gpu


def _dispatcher(backend: Backend, quota: int = 1 << 30) -> Dispatcher:
    return Dispatcher(backend, Ledger(quota), GpuSessionTable(backend, idle_ttl_seconds=60))


def _vector_add_batch(n: int, session: str) -> Batch:
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    regions = (
        StagedRegion(0, a.tobytes(), 0, True),
        StagedRegion(1, b.tobytes(), 1 << 20, True),
        StagedRegion(2, bytes(4 * n), 2 << 20, True),
    )
    args = (*(BufferRef(i, 0, 4 * n) for i in range(3)), ScalarArg(ArgTag.U32, n))
    spec = CATALOG["vector_add"]
    blocks = (n + 255) // 256
    return Batch(
        session,
        regions,
        (
            LoadKernel(0, spec.ptx_text().encode(), "vector_add"),
            LaunchKernel(0, (blocks, 1, 1), (256, 1, 1), 0, args),
            LaunchKernel(0, (blocks, 1, 1), (256, 1, 1), 0, args),
        ),
        end_session=True,
    )


def test_vector_add_matches_the_cpu_backend(cuda_backend: Backend) -> None:
    batch = _vector_add_batch(100_003, "va")
    on_gpu = _dispatcher(cuda_backend).execute("t", batch)
    on_cpu = _dispatcher(CpuBackend()).execute("t", batch)
    assert [r.code for r in on_gpu.results] == [0, 0, 0]
    np.testing.assert_array_equal(
        np.frombuffer(on_gpu.buffers[2], np.float32), np.frombuffer(on_cpu.buffers[2], np.float32)
    )
    assert on_gpu.kernel_seconds > 0


def test_the_driver_refuses_garbage_ptx(cuda_backend: Backend) -> None:
    load = LoadKernel(0, b".version 7.8\n.target sm_80\n.visible .entry k(\n)\n{ bogus; }\n", "k")
    outcome = _dispatcher(cuda_backend).execute("t", Batch("bad", (), (load,), end_session=True))
    assert outcome.results[0].code == AbiError.MALFORMED_PTX


def test_the_quota_holds_on_the_device(cuda_backend: Backend) -> None:
    batch = _vector_add_batch(1 << 16, "quota")
    outcome = _dispatcher(cuda_backend, quota=2 * 4 * (1 << 16)).execute("t", batch)
    # a and b fit the quota; c does not, so neither launch runs
    codes = [r.code for r in outcome.results]
    assert codes == [0, AbiError.QUOTA_EXCEEDED, AbiError.QUOTA_EXCEEDED]


def test_launch_errors_are_mapped_to_codes_before_the_driver(cuda_backend: Backend) -> None:
    batch = _vector_add_batch(256, "errors")
    load, good = batch.commands[0], batch.commands[1]
    assert isinstance(good, LaunchKernel)
    short_argv = LaunchKernel(0, (1, 1, 1), (256, 1, 1), 0, good.args[:3])
    wide_n = LaunchKernel(0, (1, 1, 1), (256, 1, 1), 0, (*good.args[:3], ScalarArg(ArgTag.U64, 1)))
    tall_grid = LaunchKernel(0, (1, 70_000, 1), (256, 1, 1), 0, good.args)
    big_shared = LaunchKernel(0, (1, 1, 1), (256, 1, 1), 64 << 10, good.args)
    commands = (load, short_argv, wide_n, tall_grid, big_shared, good)
    outcome = _dispatcher(cuda_backend).execute(
        "t", Batch("errors", batch.regions, commands, end_session=True)
    )
    assert [r.code for r in outcome.results] == [0, -9, -9, -8, -5, 0]


def test_device_buffers_round_trip_on_the_device(cuda_backend: Backend) -> None:
    from tensorwasm_common.gpu_batch import AllocBuffer, DeviceBufferRef, ReadBuffer, WriteBuffer

    n = 1 << 12
    a = np.arange(n, dtype=np.float32)
    spec = CATALOG["vector_add"]
    args = (*(DeviceBufferRef(handle, 0) for handle in (1, 2, 3)), ScalarArg(ArgTag.U32, n))
    launch = LaunchKernel(0, (n // 256, 1, 1), (256, 1, 1), 0, args)
    commands = (
        LoadKernel(0, spec.ptx_text().encode(), "vector_add"),
        *(AllocBuffer(h, 4 * n) for h in (1, 2, 3)),
        WriteBuffer(1, 0, a.tobytes()),
        WriteBuffer(2, 0, a.tobytes()),
        launch,
        ReadBuffer(3, 0, 4 * n),
    )
    dispatcher = _dispatcher(cuda_backend, quota=1 << 20)
    outcome = dispatcher.execute("t", Batch("resident", (), commands, end_session=True))
    assert [r.code for r in outcome.results] == [0] * len(commands)
    np.testing.assert_array_equal(np.frombuffer(outcome.results[-1].data, np.float32), 2 * a)
    assert dispatcher.ledger.usage("t").staged_bytes_current == 0  # freed with the session


def test_a_128_mib_buffer_is_refused_under_a_64_mib_cap(cuda_backend: Backend) -> None:
    from tensorwasm_common.gpu_batch import AllocBuffer

    dispatcher = _dispatcher(cuda_backend, quota=64 << 20)
    commands = (AllocBuffer(1, 128 << 20), AllocBuffer(2, 32 << 20))
    outcome = dispatcher.execute("t", Batch("cap", (), commands, end_session=True))
    assert [r.code for r in outcome.results] == [AbiError.QUOTA_EXCEEDED, 0]
