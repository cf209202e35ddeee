"""The dispatcher's batch execution on the cpu backend: every kernel of the library against
its reference, the per-command ABI codes, sessions, the staged-memory quota and usage."""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Sequence

import blake3
import numpy as np
import pytest
from tensorwasm_common.gpu_abi import AbiError, ArgTag, BufferRef, ScalarArg
from tensorwasm_common.gpu_batch import Batch, BatchResult, LaunchKernel, LoadKernel, StagedRegion
from tensorwasm_dispatcher.accounting import Ledger
from tensorwasm_dispatcher.backends.cpu import CpuBackend, CpuKernels
from tensorwasm_dispatcher.batch_runner import Dispatcher
from tensorwasm_dispatcher.errors import InvalidBatchError
from tensorwasm_dispatcher.gpu_sessions import GpuSessionTable
from tensorwasm_kernels import CATALOG, KernelSpec, ParamKind

Dim3 = tuple[int, int, int]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make_dispatcher(
    quota: int = 1 << 30, clock: Clock | None = None, kernels: CpuKernels = CpuKernels.PTX
) -> Dispatcher:
    backend = CpuBackend(kernels=kernels)
    ledger = Ledger(quota)
    sessions = GpuSessionTable(
        backend,
        idle_ttl_seconds=60,
        on_count=lambda tenant, delta: ledger.record(tenant, open_sessions=delta),
        clock=clock or Clock(),
    )
    return Dispatcher(backend, ledger, sessions)


def ptx(name: str) -> bytes:
    return CATALOG[name].ptx_text().encode("utf-8")


def scalar(kind: ParamKind, value: float) -> ScalarArg:
    if kind is ParamKind.F32:
        return ScalarArg(ArgTag.F32, struct.unpack("<I", struct.pack("<f", value))[0])
    return ScalarArg(ArgTag.I32, int(value))


def launch_batch(
    spec: KernelSpec,
    buffers: Sequence[np.ndarray],
    scalars: Sequence[float],
    grid: Dim3,
    block: Dim3,
    *,
    session: str = "s",
    load: bool = True,
) -> Batch:
    """Load (optionally) + one launch of `spec`, each buffer its own region at 4096*i."""
    regions = tuple(
        StagedRegion(i, b.astype(np.float32).tobytes(), 4096 * (i + 1), True)
        for i, b in enumerate(buffers)
    )
    pointers = iter(range(len(buffers)))
    values = iter(scalars)
    args = tuple(
        BufferRef(index := next(pointers), 0, len(regions[index].data))
        if p.kind.is_pointer
        else scalar(p.kind, next(values))
        for p in spec.params
    )
    commands: list[LoadKernel | LaunchKernel] = []
    if load:
        commands.append(LoadKernel(0, ptx(spec.name), spec.entry))
    commands.append(LaunchKernel(0, grid, block, 0, args))
    return Batch(session, regions, tuple(commands))


def f32(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.float32)


def codes(outcome: BatchResult) -> list[int]:
    return [result.code for result in outcome.results]


RNG = np.random.default_rng(7)


def rand(size: int) -> np.ndarray:
    return RNG.standard_normal(size).astype(np.float32)


CASES = {
    "vector_add": (
        (rand(1000), rand(1000), np.zeros(1000, np.float32)),
        (1000,),
        (4, 1, 1),
        (256, 1, 1),
    ),
    "saxpy": ((rand(777), rand(777)), (1.5, 777), (4, 1, 1), (256, 1, 1)),
    "matmul": (
        (rand(20 * 12), rand(12 * 30), np.zeros(600, np.float32)),
        (20, 30, 12),
        (2, 2, 1),
        (16, 16, 1),
    ),
    "conv2d": (
        (rand(33 * 47), rand(9), np.zeros(33 * 47, np.float32)),
        (33, 47),
        (3, 3, 1),
        (16, 16, 1),
    ),
    "reduce_sum": ((rand(5000), np.zeros(1, np.float32)), (5000,), (8, 1, 1), (256, 1, 1)),
}


# What the PTX may differ from the references by: they accumulate in f64 and round once,
# the kernels accumulate in f32 in their own order (elementwise kernels are bit-exact).
PTX_TOLERANCE = {"matmul": (1e-5, 1e-5), "conv2d": (1e-5, 1e-5), "reduce_sum": (1e-5, 1e-3)}


@pytest.mark.parametrize("kernels", list(CpuKernels))
@pytest.mark.parametrize("name", sorted(CATALOG))
def test_every_kernel_matches_its_reference(name: str, kernels: CpuKernels) -> None:
    spec = CATALOG[name]
    buffers, scalars, grid, block = CASES[name]
    dispatcher = make_dispatcher(kernels=kernels)

    outcome = dispatcher.execute("t", launch_batch(spec, buffers, scalars, grid, block))

    assert codes(outcome) == [0, 0]
    expected = [b.copy() for b in buffers]
    spec.run_reference(expected, list(scalars), grid, block)
    written = [i for i, p in enumerate(spec.pointer_params) if p.kind.is_written]
    assert sorted(outcome.buffers) == written  # only what the kernel writes comes back
    for index in written:
        if kernels is CpuKernels.PTX and name in PTX_TOLERANCE:
            rtol, atol = PTX_TOLERANCE[name]
            got = f32(outcome.buffers[index])
            np.testing.assert_allclose(got, expected[index], rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(f32(outcome.buffers[index]), expected[index])
    assert outcome.kernel_seconds > 0


def test_f32_scalars_keep_their_bits() -> None:
    spec = CATALOG["saxpy"]
    x, y = np.ones(4, np.float32), np.zeros(4, np.float32)
    batch = launch_batch(spec, (x, y), (0.0, 4), (1, 1, 1), (4, 1, 1))
    launch = batch.commands[1]
    assert isinstance(launch, LaunchKernel)
    nan_bits = ScalarArg(ArgTag.F32, 0x7FC00001)
    args = (launch.args[0], launch.args[1], nan_bits, launch.args[3])
    batch = Batch(
        "s", batch.regions, (batch.commands[0], LaunchKernel(0, (1, 1, 1), (4, 1, 1), 0, args))
    )
    outcome = make_dispatcher().execute("t", batch)
    assert codes(outcome) == [0, 0]
    assert all(math.isnan(v) for v in f32(outcome.buffers[1]))


# --- per-command codes ---------------------------------------------------------------


def run_one(
    command: LoadKernel | LaunchKernel, regions: tuple[StagedRegion, ...] = ()
) -> tuple[int, str]:
    dispatcher = make_dispatcher()
    load = LoadKernel(0, ptx("vector_add"), "vector_add")
    outcome = dispatcher.execute("t", Batch("s", regions, (load, command)))
    assert outcome.results[0].code == 0
    return outcome.results[1].code, outcome.results[1].message


VA_REGIONS = tuple(StagedRegion(i, bytes(256), 1024 + 256 * i, True) for i in range(3))
VA_ARGS = (
    BufferRef(0, 0, 256),
    BufferRef(1, 0, 256),
    BufferRef(2, 0, 256),
    ScalarArg(ArgTag.U32, 64),
)


def va(
    grid: Dim3 = (1, 1, 1), block: Dim3 = (64, 1, 1), shared: int = 0, args: tuple = VA_ARGS
) -> LaunchKernel:
    return LaunchKernel(0, grid, block, shared, args)


FOREIGN_HEADER = b".version 7.8\n.target sm_80\n.address_size 64\n"


@pytest.mark.parametrize("kernels", list(CpuKernels))
def test_foreign_ptx_runs_on_cpu(kernels: CpuKernels) -> None:
    # A guest's own kernel (not the library's): out[i] = i * 3, through the PTX executor.
    foreign = (
        FOREIGN_HEADER
        + b"""
.visible .entry triple(.param .u64 out, .param .u32 n)
{
    .reg .pred %p<2>; .reg .b32 %r<4>; .reg .b64 %rd<4>;
    ld.param.u64 %rd1, [out];
    ld.param.u32 %r1, [n];
    mov.u32 %r2, %tid.x;
    setp.ge.u32 %p1, %r2, %r1;
    @%p1 bra DONE;
    mul.lo.u32 %r3, %r2, 3;
    mul.wide.u32 %rd2, %r2, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r3;
DONE:
    ret;
}
"""
    )
    regions = (StagedRegion(0, bytes(64), 4096, True),)
    launch = LaunchKernel(
        0, (1, 1, 1), (32, 1, 1), 0, (BufferRef(0, 0, 64), ScalarArg(ArgTag.U32, 10))
    )
    outcome = make_dispatcher(kernels=kernels).execute(
        "t", Batch("s", regions, (LoadKernel(0, foreign, "triple"), launch))
    )
    assert codes(outcome) == [0, 0]
    expected = [3 * i for i in range(10)] + [0] * 6
    assert np.frombuffer(outcome.buffers[0], np.uint32).tolist() == expected


def test_an_unsupported_instruction_is_not_available_and_named() -> None:
    foreign = (
        FOREIGN_HEADER
        + b""".visible .entry tex_user(.param .u64 t)
{
    .reg .f32 %f<5>; .reg .b32 %r<2>; .reg .b64 %rd<2>;
    tex.1d.v4.f32.s32 {%f1, %f2, %f3, %f4}, [%rd1, {%r1}];
    ret;
}
"""
    )
    code, message = run_one(LoadKernel(1, foreign, "tex_user"))
    assert code == AbiError.NOT_AVAILABLE
    assert "does not support" in message and "tex.1d.v4.f32.s32" in message


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (LoadKernel(1, b"no entry here", "vector_add"), AbiError.MALFORMED_PTX),
        (
            LoadKernel(1, b".entry vector_add(" + b" " * (8 << 20), "vector_add"),
            AbiError.MALFORMED_PTX,
        ),
        (LoadKernel(1, ptx("saxpy"), "vector_add"), AbiError.MALFORMED_PTX),  # no such entry in it
        (LoadKernel(1, ptx("vector_add"), ""), AbiError.INVALID_ARGS),
        (LoadKernel(0, ptx("vector_add"), "vector_add"), AbiError.INVALID_KERNEL),  # id in use
        (LaunchKernel(9, (1, 1, 1), (64, 1, 1), 0, VA_ARGS), AbiError.INVALID_KERNEL),
        (va(block=(0, 1, 1)), AbiError.INVALID_DIMENSIONS),
        (va(block=(1, 1, 128)), AbiError.INVALID_DIMENSIONS),  # the device's z limit is 64
        (va(grid=(1, 70000, 1)), AbiError.INVALID_DIMENSIONS),  # and grid y is 65535
        (va(shared=(48 << 10) + 1), AbiError.LAUNCH_FAILED),
        (va(args=VA_ARGS[:3]), AbiError.INVALID_ARGS),
        (va(args=(*VA_ARGS[:3], ScalarArg(ArgTag.F32, 0))), AbiError.INVALID_ARGS),
        (va(args=(*VA_ARGS[:3], ScalarArg(ArgTag.I64, 64))), AbiError.INVALID_ARGS),
        # A u64 of 0 where the kernel dereferences a pointer: it faults, as on a GPU.
        (va(args=(ScalarArg(ArgTag.U64, 0), *VA_ARGS[1:])), AbiError.LAUNCH_FAILED),
        (va(args=(BufferRef(7, 0, 4), *VA_ARGS[1:])), AbiError.INVALID_POINTER),
        (va(args=(BufferRef(0, 200, 100), *VA_ARGS[1:])), AbiError.INVALID_POINTER),
        (  # n = 65 over 64-element buffers: a GPU would fault
            va(block=(128, 1, 1), args=(*VA_ARGS[:3], ScalarArg(ArgTag.U32, 65))),
            AbiError.LAUNCH_FAILED,
        ),
        (va(args=(BufferRef(0, 2, 200), *VA_ARGS[1:])), AbiError.LAUNCH_FAILED),  # misaligned
    ],
)
def test_command_codes(command: LoadKernel | LaunchKernel, code: AbiError) -> None:
    assert run_one(command, VA_REGIONS)[0] == code


def test_a_failed_command_does_not_stop_the_others() -> None:
    dispatcher = make_dispatcher()
    load = LoadKernel(0, ptx("vector_add"), "vector_add")
    regions = (
        StagedRegion(0, np.ones(64, np.float32).tobytes(), 1024, True),
        StagedRegion(1, np.zeros(64, np.float32).tobytes(), 1280, True),
    )
    args = (
        BufferRef(0, 0, 256),
        BufferRef(0, 0, 256),
        BufferRef(1, 0, 256),
        ScalarArg(ArgTag.I32, 64),
    )
    outcome = dispatcher.execute(
        "t", Batch("s", regions, (load, va(block=(0, 1, 1), args=args), va(args=args)))
    )
    assert codes(outcome) == [0, AbiError.INVALID_DIMENSIONS, 0]
    np.testing.assert_array_equal(f32(outcome.buffers[1]), np.full(64, 2, np.float32))


def test_malformed_batches_are_refused_whole() -> None:
    dispatcher = make_dispatcher()
    with pytest.raises(InvalidBatchError) as caught:
        dispatcher.execute("t", Batch("", (), ()))
    assert caught.value.reason == "INVALID_GPU_BATCH"
    with pytest.raises(InvalidBatchError):
        dispatcher.execute("t", Batch("s", VA_REGIONS + VA_REGIONS[:1], ()))
    with pytest.raises(InvalidBatchError):
        dispatcher.execute("t", Batch("s", (), (va(),) * 4097))
    assert dispatcher.ledger.usage("t").execute_requests == 0


# --- sessions ------------------------------------------------------------------------


def test_kernels_stay_loaded_for_the_session() -> None:
    dispatcher = make_dispatcher()
    spec = CATALOG["vector_add"]
    first = launch_batch(spec, (np.ones(8), np.ones(8), np.zeros(8)), (8,), (1, 1, 1), (8, 1, 1))
    assert codes(dispatcher.execute("t", first)) == [0, 0]
    again = launch_batch(
        spec, (np.ones(8), np.ones(8), np.zeros(8)), (8,), (1, 1, 1), (8, 1, 1), load=False
    )
    assert codes(dispatcher.execute("t", again)) == [0]
    other_session = launch_batch(
        spec,
        (np.ones(8), np.ones(8), np.zeros(8)),
        (8,),
        (1, 1, 1),
        (8, 1, 1),
        session="x",
        load=False,
    )
    assert codes(dispatcher.execute("t", other_session)) == [AbiError.INVALID_KERNEL]
    # the same session id of another tenant is another session
    assert codes(dispatcher.execute("u", again)) == [AbiError.INVALID_KERNEL]


def test_end_session_unloads_and_idle_sessions_expire() -> None:
    clock = Clock()
    dispatcher = make_dispatcher(clock=clock)
    load = LoadKernel(0, ptx("vector_add"), "vector_add")
    dispatcher.execute("t", Batch("a", (), (load,)))
    dispatcher.execute("t", Batch("b", (), (load,)))
    assert len(dispatcher.sessions) == 2
    assert dispatcher.ledger.usage("t").open_sessions == 2
    dispatcher.execute("t", Batch("a", (), (), end_session=True))
    assert len(dispatcher.sessions) == 1
    clock.now = 59.0
    assert dispatcher.sessions.expire() == 0
    clock.now = 60.0
    assert dispatcher.sessions.expire() == 1
    assert dispatcher.ledger.usage("t").open_sessions == 0
    assert codes(dispatcher.execute("t", Batch("b", VA_REGIONS, (va(),)))) == [
        AbiError.INVALID_KERNEL
    ]


# --- quota and usage -----------------------------------------------------------------


def test_staging_over_the_quota_fails_that_command() -> None:
    # Each buffer is charged whole allocation granules: 200 bytes cost 512.
    dispatcher = make_dispatcher(quota=3 * 512)
    spec = CATALOG["vector_add"]
    small = launch_batch(
        spec, (np.ones(50), np.ones(50), np.zeros(50)), (50,), (1, 1, 1), (64, 1, 1)
    )
    assert codes(dispatcher.execute("t", small)) == [0, 0]  # 3 x 512: exactly the quota
    big = launch_batch(
        spec, (np.ones(256), np.ones(256), np.zeros(256)), (256,), (1, 1, 1), (64, 1, 1),
        session="b",
    )  # fmt: skip
    outcome = dispatcher.execute("t", big)
    assert codes(outcome) == [0, AbiError.QUOTA_EXCEEDED]
    assert "quota of 1536 bytes" in outcome.results[1].message
    assert outcome.buffers == {}
    usage = dispatcher.ledger.usage("t")
    assert (usage.staged_bytes_current, usage.staged_bytes_peak) == (0, 1536)
    assert usage.staged_bytes_total == 1536 + 1024  # a of the second batch was staged
    assert (usage.launches, usage.loads, usage.failed_commands) == (1, 2, 1)
    assert usage.execute_requests == 2
    assert dispatcher.ledger.usage("other").staged_bytes_total == 0


def test_the_quota_spans_a_tenants_concurrent_requests() -> None:
    ledger = Ledger(1000)
    assert ledger.reserve("t", 600)
    assert not ledger.reserve("t", 500)  # another request of t, while the first is in flight
    assert ledger.reserve("u", 1000)  # another tenant has its own quota
    ledger.release("t", 600)
    assert ledger.reserve("t", 1000)
    assert ledger.usage("t").staged_bytes_peak == 1000


def test_kernel_time_is_accounted_per_tenant() -> None:
    dispatcher = make_dispatcher()
    spec = CATALOG["matmul"]
    buffers, scalars, grid, block = CASES["matmul"]
    for _ in range(3):
        dispatcher.execute("t", launch_batch(spec, buffers, scalars, grid, block, session="m"))
    usage = dispatcher.ledger.usage("t")
    assert usage.launches == 3 and usage.kernel_seconds > 0
    assert dispatcher.ledger.usage("u").kernel_seconds == 0


def test_requests_of_many_threads_account_exactly() -> None:
    dispatcher = make_dispatcher(quota=1 << 20)
    spec = CATALOG["vector_add"]

    def work(index: int) -> None:
        batch = launch_batch(
            spec, (np.ones(64), np.ones(64), np.zeros(64)), (64,), (1, 1, 1), (64, 1, 1),
            session=f"s{index}",
        )  # fmt: skip
        assert codes(dispatcher.execute("t", batch)) == [0, 0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    usage = dispatcher.ledger.usage("t")
    assert (usage.launches, usage.staged_bytes_current, usage.staged_bytes_total) == (
        16,
        0,
        16 * 3 * 512,  # three 256-byte buffers, each one 512-byte allocation granule
    )


def test_a_registered_kernel_loads_only_with_its_digest() -> None:
    """LoadKernel.expected_digest (a registered kernel's manifest digest) is checked before
    the PTX is loaded."""
    text = ptx("vector_add")
    good = LoadKernel(1, text, "vector_add", blake3.blake3(text).hexdigest())
    assert run_one(good) == (0, "")
    code, message = run_one(LoadKernel(1, text, "vector_add", "00" * 32))
    assert code == AbiError.MALFORMED_PTX and "registered digest" in message
