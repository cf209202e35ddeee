"""The cuda backend against a recording fake of `cuda.bindings.driver`: which driver calls
a batch makes, on which stream, in which order and with which argument arrays.

Each test runs batches through `Dispatcher.execute`, as the servicer does, with the fake
standing in for the device (`fake_cuda_driver.py`): stream work runs in stream order only
when the stream is waited for, kernels are Python behaviours, faults are sticky.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from tensorwasm_common.gpu_abi import AbiError, ArgTag, BufferRef, ScalarArg
from tensorwasm_common.gpu_batch import (
    AllocBuffer,
    Batch,
    DeviceBufferRef,
    FreeBuffer,
    LaunchKernel,
    LoadKernel,
    ReadBuffer,
    StagedRegion,
    WriteBuffer,
)
from tensorwasm_dispatcher.accounting import Ledger
from tensorwasm_dispatcher.backends.cuda import STACK_BYTES_PER_THREAD, CudaBackend
from tensorwasm_dispatcher.batch_runner import Dispatcher
from tensorwasm_dispatcher.gpu_sessions import GpuSessionTable
from tensorwasm_kernels import CATALOG

from tests.unit.dispatcher.backends.fake_cuda_driver import FakeDriver

VECTOR_ADD = CATALOG["vector_add"].ptx_text().encode()
N = 64
STREAM_CALLS = {
    "cuMemAllocAsync": -1, "cuMemFreeAsync": -1, "cuMemsetD8Async": -1,
    "cuMemcpyHtoDAsync": -1, "cuMemcpyDtoHAsync": -1, "cuEventRecord": -1,
    "cuLaunchKernel": 3, "cuStreamQuery": 0, "cuStreamSynchronize": 0,
}  # fmt: skip  # the position of the stream among each call's recorded arguments
SYNCHRONOUS_CALLS = {"cuMemAlloc", "cuMemFree", "cuMemcpyHtoD", "cuMemcpyDtoH", "cuMemsetD8"}


def make(
    fake: FakeDriver, quota: int = 1 << 30, sessions: int = 64
) -> tuple[Dispatcher, CudaBackend]:
    backend = CudaBackend(0, driver=fake)
    table = GpuSessionTable(backend, idle_ttl_seconds=60, max_sessions_per_tenant=sessions)
    return Dispatcher(backend, Ledger(quota), table), backend


def floats(*values: float) -> bytes:
    return np.array(values, np.float32).tobytes()


def vector_add_batch(session: str = "s", *, offsets: tuple[int, int, int] = (0, 0, 0)) -> Batch:
    """vector_add over three staged regions at guest addresses 4096 * (i + 1) + offset."""
    a, b = np.arange(N, dtype=np.float32), np.full(N, 0.5, np.float32)
    regions = tuple(
        StagedRegion(i, data, 4096 * (i + 1) + offsets[i], True)
        for i, data in enumerate((a.tobytes(), b.tobytes(), bytes(4 * N)))
    )
    args = (*(BufferRef(i, 0, 4 * N) for i in range(3)), ScalarArg(ArgTag.U32, N))
    return Batch(
        session,
        regions,
        (LoadKernel(0, VECTOR_ADD, "vector_add"), LaunchKernel(0, (1, 1, 1), (N, 1, 1), 0, args)),
    )


def codes(outcome: object) -> list[int]:
    return [r.code for r in outcome.results]  # type: ignore[attr-defined]


def test_the_context_blocks_waiting_threads_and_caps_the_stack() -> None:
    fake = FakeDriver()
    make(fake)
    names = [call.name for call in fake.calls]
    assert names.index("cuDevicePrimaryCtxSetFlags") < names.index("cuDevicePrimaryCtxRetain")
    assert fake.context_flags == int(fake.CUctx_flags.CU_CTX_SCHED_BLOCKING_SYNC)
    assert fake.limits == {fake.CUlimit.CU_LIMIT_STACK_SIZE: STACK_BYTES_PER_THREAD}
    # A second backend of the process finds the context active: it keeps the flags set.
    make(fake)
    assert fake.retained == 2
    assert fake.context_flags == int(fake.CUctx_flags.CU_CTX_SCHED_BLOCKING_SYNC)


def test_a_batch_stays_on_its_stream_and_waits_once() -> None:
    fake = FakeDriver()
    dispatcher, _ = make(fake)
    batch = vector_add_batch()
    launches = tuple(batch.commands[1] for _ in range(50))
    outcome = dispatcher.execute("t", Batch("s", batch.regions, (batch.commands[0], *launches)))
    assert codes(outcome) == [0] * 51
    expected = np.arange(N, dtype=np.float32) + 0.5
    np.testing.assert_array_equal(np.frombuffer(outcome.buffers[2], np.float32), expected)
    (stream,) = fake.streams
    for call in fake.calls:
        assert call.name not in SYNCHRONOUS_CALLS, call.name
        if call.name in STREAM_CALLS:
            assert call.args[STREAM_CALLS[call.name]] == stream, call
    # Nothing waits between the launches; the events time each of them (1 ms apiece).
    names = [call.name for call in fake.calls]
    first, last = names.index("cuLaunchKernel"), len(names) - names[::-1].index("cuLaunchKernel")
    assert names[first:last].count("cuLaunchKernel") == 50
    assert not {"cuStreamQuery", "cuStreamSynchronize"} & set(names[first:last])
    assert names[last:].count("cuStreamQuery") == 1  # the one wait of the batch
    assert outcome.kernel_seconds == pytest.approx(0.050)
    assert len(fake.named("cuEventCreate")) == 100


def test_buffers_are_zeroed_written_and_read_in_the_streams_order() -> None:
    # tests/gpu/test_cuda_backend.py's sequence: a zero-fill on the NULL stream could land
    # after the write on the session's stream, and the kernel read a half-copied buffer.
    fake = FakeDriver()
    dispatcher, _ = make(fake)
    a, b = np.arange(N, dtype=np.float32), np.full(N, 2.0, np.float32)
    first = Batch(
        "s",
        (),
        (
            LoadKernel(0, VECTOR_ADD, "vector_add"),
            *(AllocBuffer(h, 4 * N) for h in (1, 2, 3)),
            WriteBuffer(1, 0, a.tobytes()),
            WriteBuffer(2, 0, b.tobytes()),
            LaunchKernel(
                0, (1, 1, 1), (N, 1, 1), 0,
                (*(DeviceBufferRef(h, 0) for h in (1, 2, 3)), ScalarArg(ArgTag.U32, N)),
            ),
            ReadBuffer(3, 0, 4 * N),
            ReadBuffer(1, 4 * N - 4, 4),
        ),
    )  # fmt: skip
    outcome = dispatcher.execute("t", first)
    assert codes(outcome) == [0] * 9
    np.testing.assert_array_equal(np.frombuffer(outcome.results[7].data, np.float32), a + b)
    assert outcome.results[8].data == a[-1:].tobytes()
    zeroed = dispatcher.execute("t", Batch("s", (), (ReadBuffer(3, 0, 8), FreeBuffer(3))))
    assert codes(zeroed) == [0, 0]
    assert not SYNCHRONOUS_CALLS & {call.name for call in fake.calls}
    assert len(fake.named("cuMemsetD8Async")) == 3


def test_the_argv_is_checked_against_the_parameters_the_driver_reports() -> None:
    # A parameter list the text check could not read: LLVM/Triton qualifiers and a comment.
    ptx = (
        b".version 7.8\n.target sm_80\n.address_size 64\n"
        b".visible .entry noop(\n"
        b"    .param .u64 .ptr .global .align 1 noop_param_0, // the input\n"
        b"    .param .u32 noop_param_1\n)\n{\nret;\n}\n"
    )
    fake = FakeDriver()
    dispatcher, _ = make(fake)
    pointer = BufferRef(0, 0, 16)
    region = (StagedRegion(0, bytes(16), 0, False),)
    commands = (
        LoadKernel(0, ptx, "noop"),
        LaunchKernel(0, (1, 1, 1), (1, 1, 1), 0, (pointer,)),  # one argument short
        LaunchKernel(0, (1, 1, 1), (1, 1, 1), 0, (pointer, ScalarArg(ArgTag.U64, 3))),
        LaunchKernel(0, (1, 1, 1), (1, 1, 1), 0, (pointer, ScalarArg(ArgTag.U32, 3))),
    )
    outcome = dispatcher.execute("t", Batch("s", region, commands))
    assert codes(outcome) == [0, -9, -9, 0]
    assert "declares 2 parameters of [8, 4] bytes" in outcome.results[1].message
    (launched,) = fake.named("cuLaunchKernel")  # only the matching one reached the driver
    assert len(launched.args[4]) == 2


def test_a_driver_that_does_not_report_parameters_gets_no_launches() -> None:
    fake = FakeDriver()
    fake.report_params = False
    dispatcher, _ = make(fake)
    outcome = dispatcher.execute("t", vector_add_batch())
    assert codes(outcome) == [0, int(AbiError.INVALID_ARGS)]
    assert not fake.named("cuLaunchKernel")


def test_device_pointers_keep_the_guest_addresses_alignment() -> None:
    # b's region starts 2 bytes past a 256-byte boundary and c's 4: with the region's
    # data at the base of its allocation, a pointer into b would be misaligned there
    # (aligned in the guest, which is what unified memory would show the kernel).
    fake = FakeDriver()
    dispatcher, _ = make(fake)
    a = np.arange(N, dtype=np.float32)
    regions = (
        StagedRegion(0, a.tobytes(), 4096, False),
        StagedRegion(1, bytes(2) + floats(*[0.5] * N), 8192 + 254, False),  # data at 8192+256
        StagedRegion(2, bytes(4 * N), 12288 + 4, True),
    )
    args = (
        BufferRef(0, 0, 4 * N), BufferRef(1, 2, 4 * N), BufferRef(2, 0, 4 * N),
        ScalarArg(ArgTag.U32, N),
    )  # fmt: skip
    batch = Batch(
        "s", regions, (LoadKernel(0, VECTOR_ADD, "vector_add"),
                       LaunchKernel(0, (1, 1, 1), (N, 1, 1), 0, args)),
    )  # fmt: skip
    outcome = dispatcher.execute("t", batch)
    assert codes(outcome) == [0, 0], outcome.results
    np.testing.assert_array_equal(np.frombuffer(outcome.buffers[2], np.float32), a + 0.5)
    (launched,) = fake.named("cuLaunchKernel")
    pointers = [launched.args[5].pointer(i) for i in range(3)]
    assert [pointer % 256 for pointer in pointers] == [0, 0, 4]  # 4096, 8192+256, 12288+4


def test_device_buffer_offsets_must_be_aligned() -> None:
    fake = FakeDriver()
    dispatcher, _ = make(fake)
    refs = (DeviceBufferRef(1, 2), DeviceBufferRef(1, 0), DeviceBufferRef(1, 0))
    batch = Batch(
        "s",
        (),
        (
            LoadKernel(0, VECTOR_ADD, "vector_add"),
            AllocBuffer(1, 4 * N),
            LaunchKernel(0, (1, 1, 1), (N, 1, 1), 0, (*refs, ScalarArg(ArgTag.U32, N))),
        ),
    )
    outcome = dispatcher.execute("t", batch)
    assert codes(outcome) == [0, 0, int(AbiError.INVALID_POINTER)]
    assert "not a multiple of 4" in outcome.results[2].message
    assert not fake.named("cuLaunchKernel")


def test_a_failed_copy_back_is_reported_on_the_launches_not_raised() -> None:
    fake = FakeDriver()
    dispatcher, _ = make(fake)
    fake.fail["cuMemcpyDtoHAsync"] = fake.CUresult.CUDA_ERROR_ILLEGAL_ADDRESS
    outcome = dispatcher.execute("t", vector_add_batch())
    assert codes(outcome) == [0, int(AbiError.LAUNCH_FAILED)]
    assert "copying the results back failed" in outcome.results[1].message
    assert "CUDA_ERROR_ILLEGAL_ADDRESS" in outcome.results[1].message
    assert outcome.buffers == {}
    # The staged buffers are released; the loaded module stays charged with its session.
    assert dispatcher.ledger.usage("t").staged_bytes_current == len(VECTOR_ADD)


def test_a_kernel_fault_fails_the_queued_launches_and_copies_nothing_back() -> None:
    fake = FakeDriver()
    dispatcher, backend = make(fake)
    # vector_add on a misaligned pointer: the fake faults with a sticky 716, as a GPU would.
    args = (BufferRef(0, 2, 16), BufferRef(0, 0, 16), BufferRef(0, 0, 16), ScalarArg(ArgTag.U32, 1))
    batch = Batch(
        "s",
        (StagedRegion(0, bytes(32), 0, True),),
        (
            LoadKernel(0, VECTOR_ADD, "vector_add"),
            LaunchKernel(0, (1, 1, 1), (1, 1, 1), 0, args),
            LaunchKernel(0, (1, 1, 1), (1, 1, 1), 0, args),
        ),
    )
    outcome = dispatcher.execute("t", batch)
    assert codes(outcome) == [0, -5, -5]
    assert "CUDA_ERROR_MISALIGNED_ADDRESS" in outcome.results[1].message
    assert outcome.buffers == {}
    assert not backend.healthy()  # the sticky error: its worker process would end


def test_a_kernel_past_the_deadline_ends_its_session_without_waiting_for_it() -> None:
    spin_ptx = (
        b".version 7.8\n.target sm_80\n.address_size 64\n"
        b".visible .entry spin(\n    .param .u32 spin_param_0\n)\n{\nret;\n}\n"
    )
    fake = FakeDriver()
    dispatcher, backend = make(fake)
    batch = Batch(
        "s",
        (StagedRegion(0, bytes(8), 0, True),),
        (
            LoadKernel(0, spin_ptx, "spin"),
            AllocBuffer(1, 64),
            LaunchKernel(0, (1, 1, 1), (1, 1, 1), 0, (ScalarArg(ArgTag.U32, 1),)),
            LaunchKernel(0, (1, 1, 1), (1, 1, 1), 0, (ScalarArg(ArgTag.U32, 1),)),
        ),
    )
    # A deadline that has passed: the first query finds the kernel running, and that is all.
    outcome = dispatcher.execute("t", batch, deadline=time.monotonic())
    assert codes(outcome) == [0, -5, -5, -5]
    assert "still running at the call's deadline" in outcome.results[2].message
    assert len(dispatcher.sessions) == 0  # ended: the next request starts afresh
    usage = dispatcher.ledger.usage("t")
    assert (usage.staged_bytes_current, usage.open_sessions) == (0, 0)
    assert not fake.named("cuStreamSynchronize")
    (stream,) = fake.streams
    assert fake.hung(stream)
    assert not fake.named("cuStreamDestroy") and not fake.named("cuModuleUnload")
    assert backend.hung_streams() == 1
    assert not backend.healthy()  # only a new context ends the kernel (a worker restart)
    assert not fake.named("cuCtxSynchronize")
    # The stream and the module go once the device is done with the kernel.
    fake.end_hung_kernels()
    assert codes(dispatcher.execute("t", vector_add_batch("next"))) == [0, 0]
    assert [call.args[0] for call in fake.named("cuStreamDestroy")] == [stream]
    assert len(fake.named("cuModuleUnload")) == 1
    assert backend.hung_streams() == 0
    assert backend.healthy()
    backend.close()
    assert fake.retained == 0


def test_a_read_after_a_kernel_past_the_deadline_is_not_run() -> None:
    fake = FakeDriver()
    dispatcher, _ = make(fake)
    spin = b".visible .entry spin(\n.param .u32 x\n)\n{\nret;\n}\n"
    launch = LaunchKernel(0, (1, 1, 1), (1, 1, 1), 0, (ScalarArg(ArgTag.U32, 1),))
    commands = (AllocBuffer(1, 16), LoadKernel(0, spin, "spin"), launch, ReadBuffer(1, 0, 16))
    outcome = dispatcher.execute("t", Batch("s", (), commands), deadline=time.monotonic())
    assert codes(outcome) == [-5, 0, -5, -5]  # the alloc's zero-fill is queued behind it
    assert outcome.results[3].message.startswith("not run: an earlier launch outlived")
    assert not fake.named("cuStreamSynchronize") and not fake.named("cuMemcpyDtoHAsync")


def test_closing_with_a_kernel_still_running_does_not_wait_for_it() -> None:
    fake = FakeDriver()
    dispatcher, backend = make(fake)
    spin = b".visible .entry spin(\n.param .u32 x\n)\n{\nret;\n}\n"
    launch = LaunchKernel(0, (1, 1, 1), (1, 1, 1), 0, (ScalarArg(ArgTag.U32, 1),))
    outcome = dispatcher.execute(
        "t", Batch("s", (), (LoadKernel(0, spin, "spin"), launch)), deadline=time.monotonic()
    )
    assert codes(outcome) == [0, -5]
    dispatcher.sessions.close_all()
    backend.close()  # returns: the context is left for the process exit
    assert fake.retained == 1
    assert not fake.named("cuStreamSynchronize")


def test_module_memory_counts_against_the_quota_until_the_session_ends() -> None:
    def module(global_bytes: int, local_bytes: int) -> bytes:
        return (
            f".version 7.8\n.target sm_80\n.address_size 64\n"
            f".visible .global .align 4 .b8 table[{global_bytes}];\n"
            f".visible .entry noop(\n.param .u32 x\n)\n{{\n"
            f".local .align 4 .b8 frame[{local_bytes}];\nret;\n}}\n"
        ).encode()

    fake = FakeDriver()
    dispatcher, _ = make(fake, quota=1 << 30)
    resident = 132 * 2048
    small = module(1 << 20, 0)
    outcome = dispatcher.execute("t", Batch("s", (), (LoadKernel(0, small, "noop"),)))
    assert codes(outcome) == [0]
    assert dispatcher.ledger.usage("t").staged_bytes_current == len(small) + (1 << 20)
    # A 1 GiB `.global` and a 64 KiB local frame (17 GB reserved on this device) are refused.
    huge = dispatcher.execute("t", Batch("s", (), (LoadKernel(1, module(1 << 30, 0), "noop"),)))
    assert codes(huge) == [int(AbiError.QUOTA_EXCEEDED)]
    framed = dispatcher.execute("t", Batch("s", (), (LoadKernel(2, module(8, 65536), "noop"),)))
    assert codes(framed) == [int(AbiError.QUOTA_EXCEEDED)]
    assert "local memory per thread" in framed.results[0].message
    # A 1 KiB frame is allowed and charged for every resident thread.
    framed_small = module(8, 1024)
    batch = Batch("s", (), (LoadKernel(3, framed_small, "noop"),), end_session=True)
    assert codes(dispatcher.execute("t", batch)) == [0]
    usage = dispatcher.ledger.usage("t")
    assert usage.staged_bytes_peak == len(small) + (1 << 20) + len(framed_small) + 8 + (
        1024 * resident
    )
    assert usage.staged_bytes_current == 0  # the session ended: every module unloaded
    assert len(fake.named("cuModuleUnload")) == 4


def test_sessions_per_tenant_are_capped() -> None:
    fake = FakeDriver()
    dispatcher, _ = make(fake, sessions=2)
    load = (LoadKernel(0, VECTOR_ADD, "vector_add"),)
    assert codes(dispatcher.execute("t", Batch("s1", (), load))) == [0]
    assert codes(dispatcher.execute("t", Batch("s2", (), load))) == [0]
    refused = dispatcher.execute("t", Batch("s3", (), load))
    assert codes(refused) == [int(AbiError.QUOTA_EXCEEDED)]
    assert "2 GPU sessions open already" in refused.results[0].message
    assert codes(dispatcher.execute("u", Batch("s3", (), load))) == [0]  # another tenant
    assert codes(dispatcher.execute("t", Batch("s1", (), (), end_session=True))) == []
    assert codes(dispatcher.execute("t", Batch("s3", (), load))) == [0]
    assert len(fake.streams) == 4


def test_allocations_are_charged_whole_granules() -> None:
    fake = FakeDriver()
    dispatcher, _ = make(fake, quota=1024)
    batch = Batch("s", (), (AllocBuffer(1, 1), AllocBuffer(2, 1), AllocBuffer(3, 1)))
    assert codes(dispatcher.execute("t", batch)) == [0, 0, int(AbiError.QUOTA_EXCEEDED)]
    assert dispatcher.ledger.usage("t").staged_bytes_current == 1024


def test_refused_ptx_reports_ptxas_diagnostics() -> None:
    fake = FakeDriver()
    dispatcher, _ = make(fake)
    garbage = b".visible .entry k(\n.param .u32 x\n)\n{\ngarbage;\n}\n"
    outcome = dispatcher.execute("t", Batch("s", (), (LoadKernel(0, garbage, "k"),)))
    assert codes(outcome) == [int(AbiError.MALFORMED_PTX)]
    assert "CUDA_ERROR_INVALID_PTX" in outcome.results[0].message
    assert "Unexpected token 'garbage'" in outcome.results[0].message


class _Store:
    """An in-memory cubin store (the jit cache's role)."""

    def __init__(self) -> None:
        self.cubins: dict[tuple[str, str], bytes] = {}

    def get(self, ptx_digest: str, capability: str) -> bytes | None:
        return self.cubins.get((ptx_digest, capability))

    def put(self, ptx_digest: str, capability: str, data: bytes, *, replace: bool = False) -> bool:
        self.cubins[(ptx_digest, capability)] = data
        return True

    def close(self) -> None:
        pass


def test_a_failing_link_destroy_does_not_hide_the_link_error() -> None:
    fake = FakeDriver()
    fake.fail["cuLinkDestroy"] = fake.CUresult.CUDA_ERROR_INVALID_HANDLE
    backend = CudaBackend(0, driver=fake, artifacts=_Store())
    table = GpuSessionTable(backend, idle_ttl_seconds=60)
    dispatcher = Dispatcher(backend, Ledger(1 << 30), table)
    garbage = b".visible .entry k(\n.param .u32 x\n)\n{\ngarbage;\n}\n"
    outcome = dispatcher.execute("t", Batch("s", (), (LoadKernel(0, garbage, "k"),)))
    assert codes(outcome) == [int(AbiError.MALFORMED_PTX)]
    assert "Unexpected token 'garbage'" in outcome.results[0].message
    assert len(fake.named("cuLinkDestroy")) == 1
    # A good PTX still compiles, is shared and loads from its cubin.
    assert codes(dispatcher.execute("t", vector_add_batch("other"))) == [0, 0]
