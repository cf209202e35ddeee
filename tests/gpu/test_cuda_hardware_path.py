"""GPU tests of the faults issue 24 fixed in the cuda backend and the emitted PTX, on a device.

Each reproduces on hardware what `tests/unit/dispatcher/backends/test_cuda_backend_driver.py`
shows with the recording fake of the driver, and what `tests/unit/jit/ptx/` shows with the
PTX interpreter: argv checked against the parameters the driver reports (an LLVM/Triton
parameter list), guest alignment kept on the device, a kernel past the call's deadline
ending its session instead of blocking a worker, module memory (a 1 GiB `.global`, a
64 KiB local frame) counted or refused, one wait per batch of 4,096 launches, and the
emitted kernels' 64-bit indices past 2^32 threads. Every batch runs under a deadline, so
a regression fails instead of hanging the run.

Run on a machine with an NVIDIA device: `pytest -m gpu tests/gpu`.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from tensorwasm_common.gpu_abi import AbiError, ArgTag, BufferRef, ScalarArg
from tensorwasm_common.gpu_batch import Batch, BatchResult, LaunchKernel, LoadKernel, StagedRegion
from tensorwasm_dispatcher.accounting import Ledger
from tensorwasm_dispatcher.backends.base import Backend
from tensorwasm_dispatcher.backends.cuda import CudaBackend
from tensorwasm_dispatcher.batch_runner import Dispatcher
from tensorwasm_dispatcher.gpu_sessions import GpuSessionTable
from tensorwasm_jit.ptx import KernelSpec, emit
from tensorwasm_kernels import CATALOG

pytestmark = pytest.mark.gpu

HEADER = ".version 7.8\n.target sm_80\n.address_size 64\n\n"
# Stores n at *p, declared the way LLVM/Triton write parameters (with a comment inside).
TRITON_FILL = (
    HEADER
    + """.visible .entry fill(
    .param .u64 .ptr .global .align 1 fill_param_0, // the output
    .param .u32 fill_param_1
)
{
.reg .b32 %r<2>;
.reg .b64 %rd<2>;
ld.param.u64 %rd1, [fill_param_0];
ld.param.u32 %r1, [fill_param_1];
st.global.u32 [%rd1], %r1;
ret;
}
"""
)
# Runs for `duration_ns` of the device's clock, then ends.
SPIN = (
    HEADER
    + """.visible .entry spin(
    .param .u64 duration_ns
)
{
.reg .pred %p<2>;
.reg .b64 %rd<5>;
ld.param.u64 %rd1, [duration_ns];
mov.u64 %rd2, %globaltimer;
add.u64 %rd3, %rd2, %rd1;
$L__spin:
mov.u64 %rd4, %globaltimer;
setp.lt.u64 %p1, %rd4, %rd3;
@%p1 bra $L__spin;
ret;
}
"""
)
# A 64 KiB local frame per thread (ptxas: "65536 bytes stack frame").
FRAMED = (
    HEADER
    + """.visible .entry framed(
    .param .u64 out
)
{
.local .align 4 .b8 frame[65536];
.reg .b32 %r<4>;
.reg .b64 %rd<8>;
mov.u32 %r1, %tid.x;
and.b32 %r1, %r1, 16383;
mul.wide.u32 %rd1, %r1, 4;
mov.u64 %rd2, frame;
add.u64 %rd3, %rd2, %rd1;
st.local.u32 [%rd3], %r1;
xor.b32 %r2, %r1, 1;
mul.wide.u32 %rd4, %r2, 4;
add.u64 %rd5, %rd2, %rd4;
ld.local.u32 %r3, [%rd5];
ld.param.u64 %rd6, [out];
cvta.to.global.u64 %rd7, %rd6;
st.global.u32 [%rd7], %r3;
ret;
}
"""
)
# A module holding a 1 GiB `.global` array (allocated when the module loads).
BIG_GLOBAL = (
    HEADER
    + """.visible .global .align 4 .b8 table[1073741824];

.visible .entry touch(
    .param .u32 x
)
{
.reg .b32 %r<2>;
ld.param.u32 %r1, [x];
st.global.u32 [table], %r1;
ret;
}
"""
)
TIMEOUT_SECONDS = 120.0


def _dispatcher(backend: Backend, quota: int = 2 << 30) -> Dispatcher:
    return Dispatcher(backend, Ledger(quota), GpuSessionTable(backend, idle_ttl_seconds=60))


def _run(dispatcher: Dispatcher, batch: Batch, seconds: float = TIMEOUT_SECONDS) -> BatchResult:
    return dispatcher.execute("t", batch, deadline=time.monotonic() + seconds)


def _codes(outcome: BatchResult) -> list[int]:
    return [r.code for r in outcome.results]


def test_the_argv_is_checked_against_the_drivers_parameters(cuda_backend: Backend) -> None:
    region = (StagedRegion(0, bytes(8), 0, True),)
    out = BufferRef(0, 0, 8)
    commands = (
        LoadKernel(0, TRITON_FILL.encode(), "fill"),
        LaunchKernel(0, (1, 1, 1), (1, 1, 1), 0, (out,)),  # short: the driver would over-read
        LaunchKernel(0, (1, 1, 1), (1, 1, 1), 0, (out, ScalarArg(ArgTag.U32, 77))),
    )
    outcome = _run(_dispatcher(cuda_backend), Batch("triton", region, commands, True))
    assert _codes(outcome) == [0, int(AbiError.INVALID_ARGS), 0]
    assert np.frombuffer(outcome.buffers[0][:4], np.uint32)[0] == 77


def test_pointers_keep_the_guest_alignment_on_the_device(cuda_backend: Backend) -> None:
    n = 1000
    a, b = np.arange(n, dtype=np.float32), np.full(n, 0.25, np.float32)
    # Each region starts 2 bytes before its data, at guest addresses that are 4-aligned.
    regions = tuple(
        StagedRegion(i, bytes(2) + data, (i + 1) * 8192 + 254, True)
        for i, data in enumerate((a.tobytes(), b.tobytes(), bytes(4 * n)))
    )
    args = (*(BufferRef(i, 2, 4 * n) for i in range(3)), ScalarArg(ArgTag.U32, n))
    commands = (
        LoadKernel(0, CATALOG["vector_add"].ptx_text().encode(), "vector_add"),
        LaunchKernel(0, (4, 1, 1), (256, 1, 1), 0, args),
    )
    outcome = _run(_dispatcher(cuda_backend), Batch("aligned", regions, commands, True))
    assert _codes(outcome) == [0, 0]
    np.testing.assert_array_equal(np.frombuffer(outcome.buffers[2][2:], np.float32), a + b)


def test_a_kernel_past_the_deadline_ends_its_session(cuda_backend: Backend) -> None:
    dispatcher = _dispatcher(cuda_backend)
    five_seconds = ScalarArg(ArgTag.U64, 5_000_000_000)
    commands = (
        LoadKernel(0, SPIN.encode(), "spin"),
        LaunchKernel(0, (1, 1, 1), (1, 1, 1), 0, (five_seconds,)),
    )
    outcome = _run(dispatcher, Batch("spin", (), commands), seconds=0.2)
    assert _codes(outcome) == [0, int(AbiError.LAUNCH_FAILED)]
    assert "deadline" in outcome.results[1].message
    assert len(dispatcher.sessions) == 0
    # Other sessions run meanwhile, and the spinning one is released once it ends.
    vector_add = LoadKernel(0, CATALOG["vector_add"].ptx_text().encode(), "vector_add")
    give_up = time.monotonic() + TIMEOUT_SECONDS
    assert isinstance(cuda_backend, CudaBackend)
    while cuda_backend.hung_streams():
        assert time.monotonic() < give_up, "the spinning kernel's stream was never released"
        assert _codes(_run(dispatcher, Batch("other", (), (vector_add,), True))) == [0]
        time.sleep(0.05)


def test_module_memory_is_charged_or_refused(cuda_backend: Backend) -> None:
    dispatcher = _dispatcher(cuda_backend, quota=1 << 30)
    big = _run(dispatcher, Batch("big", (), (LoadKernel(0, BIG_GLOBAL.encode(), "touch"),), True))
    assert _codes(big) == [int(AbiError.QUOTA_EXCEEDED)]
    framed = _run(
        dispatcher, Batch("framed", (), (LoadKernel(0, FRAMED.encode(), "framed"),), True)
    )
    assert _codes(framed) == [int(AbiError.QUOTA_EXCEEDED)]
    assert "local memory per thread" in framed.results[0].message
    assert dispatcher.ledger.usage("t").staged_bytes_current == 0


def test_a_batch_of_4096_launches_runs_with_one_wait(cuda_backend: Backend) -> None:
    n = 1 << 10
    a = np.arange(n, dtype=np.float32)
    regions = (StagedRegion(0, a.tobytes(), 0, False), StagedRegion(1, bytes(4 * n), 8192, True))
    args = (BufferRef(0, 0, 4 * n), BufferRef(0, 0, 4 * n), BufferRef(1, 0, 4 * n),
            ScalarArg(ArgTag.U32, n))  # fmt: skip
    launch = LaunchKernel(0, (4, 1, 1), (256, 1, 1), 0, args)
    load = LoadKernel(0, CATALOG["vector_add"].ptx_text().encode(), "vector_add")
    outcome = _run(
        _dispatcher(cuda_backend), Batch("many", regions, (load, *[launch] * 4095), True)
    )
    assert _codes(outcome) == [0] * 4096
    np.testing.assert_array_equal(np.frombuffer(outcome.buffers[1], np.float32), 2 * a)
    assert outcome.kernel_seconds > 0


@pytest.mark.parametrize("blocks", [1 << 22, (1 << 22) + 1])
def test_reduce_sum_with_a_stride_of_two_to_the_32(cuda_backend: Backend, blocks: int) -> None:
    values = np.arange(1, 1001, dtype=np.float32)
    kernel = emit(KernelSpec("reduce_sum", {"block": 1024}, "f32", "sm_80"))
    regions = (StagedRegion(0, values.tobytes(), 0, False), StagedRegion(1, bytes(4), 8192, True))
    args = (BufferRef(0, 0, values.nbytes), BufferRef(1, 0, 4), ScalarArg(ArgTag.U32, 1000))
    commands = (
        LoadKernel(0, kernel.ptx.encode(), kernel.entry),
        LaunchKernel(0, (blocks, 1, 1), (1024, 1, 1), 0, args),
    )
    outcome = _run(_dispatcher(cuda_backend), Batch("reduce", regions, commands, True))
    assert _codes(outcome) == [0, 0]
    assert np.frombuffer(outcome.buffers[1], np.float32)[0] == values.sum()


def test_an_in_place_op_past_two_to_the_32_threads_applies_once(cuda_backend: Backend) -> None:
    x = np.arange(1, 257, dtype=np.float32)
    kernel = emit(KernelSpec("neg", {}, "f32", "sm_80"))
    region = (StagedRegion(0, x.tobytes(), 0, True),)
    same = BufferRef(0, 0, x.nbytes)
    launch = LaunchKernel(
        0, ((1 << 25) + 1, 1, 1), (128, 1, 1), 0, (same, same, ScalarArg(ArgTag.U32, 256))
    )
    commands = (LoadKernel(0, kernel.ptx.encode(), kernel.entry), launch)
    outcome = _run(_dispatcher(cuda_backend), Batch("wide", region, commands, True))
    assert _codes(outcome) == [0, 0]
    np.testing.assert_array_equal(np.frombuffer(outcome.buffers[0], np.float32), -x)
