"""The cpu backend's PTX executor: user-style kernels as nvcc compiles them, checked against
their NumPy references; divergence, barriers and the translation cache; and every way a
kernel or a launch can go wrong, each a typed ABI code that leaves the dispatcher whole."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import replace

import numpy as np
import pytest
from tensorwasm_common.gpu_abi import AbiError, AbiFailure, ArgTag, BufferRef, ScalarArg
from tensorwasm_common.gpu_batch import Batch, LaunchKernel, LoadKernel, StagedRegion
from tensorwasm_common.settings import SettingsError
from tensorwasm_dispatcher.accounting import Ledger
from tensorwasm_dispatcher.backends.base import BufferArg
from tensorwasm_dispatcher.backends.cpu import CpuBackend, CpuKernels
from tensorwasm_dispatcher.backends.opening import open_backend
from tensorwasm_dispatcher.batch_runner import Dispatcher
from tensorwasm_dispatcher.gpu_sessions import GpuSessionTable
from tensorwasm_dispatcher.settings import DispatcherSettings
from tensorwasm_kernels import CATALOG
from tensorwasm_kernels.ptxgen import find_tool, nvcc_release

from tests.ptx_kernels import PTX_DIR, USER_KERNELS, differential, generate, ptx_text
from tests.ptx_kernels.cases import PtxCase, check, library_cases, run_case, user_cases

CASES = user_cases()
HEADER = ".version 7.8\n.target sm_80\n.address_size 64\n"
# out[i] = in[i] * 2 for i < n, one thread per element.
DOUBLE = (
    HEADER
    + """
.visible .entry double_it(.param .u64 in, .param .u64 out, .param .u32 n)
{
    .reg .pred %p<2>; .reg .b32 %r<6>; .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [in];
    ld.param.u64 %rd2, [out];
    ld.param.u32 %r1, [n];
    mov.u32 %r2, %ctaid.x;
    mov.u32 %r3, %ntid.x;
    mov.u32 %r4, %tid.x;
    mad.lo.s32 %r5, %r2, %r3, %r4;
    setp.ge.u32 %p1, %r5, %r1;
    @%p1 bra END;
    mul.wide.u32 %rd3, %r5, 4;
    add.s64 %rd4, %rd1, %rd3;
    ld.global.u32 %r2, [%rd4];
    shl.b32 %r2, %r2, 1;
    add.s64 %rd5, %rd2, %rd3;
    st.global.u32 [%rd5], %r2;
END:
    ret;
}
"""
)


def _backend(timeout: float = 60.0) -> CpuBackend:
    return CpuBackend(launch_timeout_seconds=timeout)


def _dispatcher(backend: CpuBackend) -> tuple[Dispatcher, Ledger]:
    ledger = Ledger(1 << 30)
    return Dispatcher(backend, ledger, GpuSessionTable(backend, idle_ttl_seconds=60)), ledger


def _launch(
    backend: CpuBackend,
    ptx: str,
    entry: str,
    arrays: list[np.ndarray],
    scalars: tuple[ScalarArg, ...],
    grid: tuple[int, int, int] = (1, 1, 1),
    block: tuple[int, int, int] = (32, 1, 1),
    shared: int = 0,
) -> list[np.ndarray]:
    case = PtxCase(
        entry,
        ptx.encode(),
        entry,
        tuple(arrays),
        (*range(len(arrays)), *scalars),
        grid,
        block,
        {},
        {},
        shared,
    )
    return run_case(backend, case)


def _u32(value: int) -> ScalarArg:
    return ScalarArg(ArgTag.U32, value)


# --- user-style kernels, as nvcc writes them ------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_user_kernel_matches_its_reference(case: PtxCase) -> None:
    check(case, run_case(_backend(), case))


def test_every_user_kernel_entry_has_a_case() -> None:
    declared = {
        entry for name in USER_KERNELS for entry in re.findall(r"\.entry (\w+)\(", ptx_text(name))
    }
    assert declared == {case.entry for case in CASES}


def test_settings_choose_how_the_cpu_backend_runs_kernels() -> None:
    _, backend = open_backend(DispatcherSettings(backend="cpu", cpu_kernels="reference"))
    assert isinstance(backend, CpuBackend) and backend.kernels is CpuKernels.REFERENCE
    _, default = open_backend(DispatcherSettings(backend="cpu"))
    assert isinstance(default, CpuBackend) and default.kernels is CpuKernels.PTX
    with pytest.raises(SettingsError, match="cpu_kernels"):
        DispatcherSettings(cpu_kernels="numpy")
    with pytest.raises(SettingsError, match="cpu_launch_timeout_seconds"):
        DispatcherSettings(cpu_launch_timeout_seconds=0)


def _tool(name: str, require_env: str) -> str:
    path = find_tool(name)
    if path is None:
        if os.environ.get(require_env) == "1":
            pytest.fail(f"{name} is missing but {require_env}=1")
        pytest.skip(f"{name} is not on PATH (set {require_env}=1 to fail instead)")
    return path


@pytest.mark.parametrize("name", USER_KERNELS)
def test_ptxas_assembles_the_user_ptx(name: str) -> None:
    ptxas = _tool("ptxas", "TENSORWASM_REQUIRE_PTXAS")
    source = str(PTX_DIR / f"{name}.ptx")
    result = subprocess.run(
        [ptxas, "-arch=sm_80", "--warning-as-error", "-o", os.devnull, source],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", USER_KERNELS)
def test_user_ptx_is_what_nvcc_generates(name: str) -> None:
    nvcc = _tool("nvcc", "TENSORWASM_REQUIRE_NVCC")
    if f"// Compiler: {nvcc_release(nvcc)}\n" not in ptx_text(name):
        pytest.skip("the checked-in PTX comes from another nvcc than this one")
    assert generate(name, nvcc) == ptx_text(name), "stale: run `python -m tests.ptx_kernels`"


# --- execution semantics ------------------------------------------------------------------


def test_divergent_paths_reconverge_and_barriers_see_every_write() -> None:
    # Odd threads take a loop of tid iterations, even ones skip it; after the join every
    # thread writes to shared memory, syncs, and reads its neighbour's value.
    ptx = (
        HEADER
        + """
.visible .entry diverge(.param .u64 out)
{
    .reg .pred %p<3>; .reg .b32 %r<10>; .reg .b64 %rd<4>;
    .shared .align 4 .b8 slots[256];
    mov.u32 %r1, %tid.x;
    mov.u32 %r2, 0;
    and.b32 %r3, %r1, 1;
    setp.eq.u32 %p1, %r3, 0;
    @%p1 bra JOIN;
    mov.u32 %r4, 0;
LOOP:
    add.u32 %r2, %r2, 3;
    add.u32 %r4, %r4, 1;
    setp.lt.u32 %p2, %r4, %r1;
    @%p2 bra LOOP;
JOIN:
    add.u32 %r2, %r2, 100;
    mov.u32 %r5, slots;
    shl.b32 %r6, %r1, 2;
    add.u32 %r7, %r5, %r6;
    st.shared.u32 [%r7], %r2;
    bar.sync 0;
    add.u32 %r8, %r1, 1;
    and.b32 %r8, %r8, 63;
    shl.b32 %r8, %r8, 2;
    add.u32 %r8, %r5, %r8;
    ld.shared.u32 %r9, [%r8];
    ld.param.u64 %rd1, [out];
    mul.wide.u32 %rd2, %r1, 4;
    add.s64 %rd3, %rd1, %rd2;
    st.global.u32 [%rd3], %r9;
    ret;
}
"""
    )
    (out,) = _launch(_backend(), ptx, "diverge", [np.zeros(64, np.uint32)], (), block=(64, 1, 1))
    tid = np.arange(64)
    own = np.where(tid % 2 == 1, 3 * np.maximum(tid, 1), 0) + 100
    assert out.tolist() == np.roll(own, -1).tolist()


def test_a_module_is_translated_once() -> None:
    backend = _backend()
    stats = backend.executor.stats
    before = (stats.translations, stats.cache_hits)
    for _ in range(3):
        backend.load(DOUBLE.encode(), "double_it")
    assert (stats.translations, stats.cache_hits) == (before[0] + 1, before[1] + 2)


def test_dynamic_shared_memory_and_the_launch_geometry() -> None:
    (out,) = _launch(
        _backend(),
        DOUBLE,
        "double_it",
        [np.arange(70, dtype=np.uint32), np.zeros(70, np.uint32)],
        (_u32(70),),
        grid=(3, 1, 1),
        block=(32, 1, 1),
    )[1:]
    assert out.tolist() == [2 * i for i in range(70)]


# --- faults and bad input -------------------------------------------------------------------


def _failure(backend: CpuBackend, ptx: str, entry: str, **launch: object) -> AbiFailure:
    with pytest.raises(AbiFailure) as info:
        _launch(backend, ptx, entry, **launch)  # type: ignore[arg-type]
    return info.value


def test_an_address_outside_every_allocation_is_a_launch_failure_naming_it() -> None:
    failure = _failure(
        _backend(),
        DOUBLE,
        "double_it",
        arrays=[np.zeros(40, np.uint32), np.zeros(64, np.uint32)],
        scalars=(_u32(64),),
        block=(64, 1, 1),
    )
    assert failure.code is AbiError.LAUNCH_FAILED
    message = failure.message
    assert "double_it: an illegal address (outside every allocation)" in message
    assert "`ld.global.u32 %r2, [%rd4]`" in message
    assert "thread (40, 0, 0) of block (0, 0, 0)" in message


def test_a_fault_leaks_nothing_and_the_dispatcher_runs_on() -> None:
    dispatcher, ledger = _dispatcher(_backend())
    source = np.arange(1, 41, dtype=np.uint32).tobytes()  # 40 elements
    regions = (StagedRegion(0, source, 4096, True), StagedRegion(1, bytes(64 * 4), 8192, True))
    args = (BufferRef(0, 0, 160), BufferRef(1, 0, 256), _u32(64))
    commands = (
        LoadKernel(0, DOUBLE.encode(), "double_it"),
        LaunchKernel(0, (1, 1, 1), (32, 1, 1), 0, args),  # 32 threads: all in bounds
        LaunchKernel(0, (1, 1, 1), (64, 1, 1), 0, args),  # 64: faults
    )
    outcome = dispatcher.execute("t", Batch("s", regions, commands, end_session=True))
    assert [r.code for r in outcome.results] == [0, 0, AbiError.LAUNCH_FAILED]
    # The first launch's writes came back; the faulting one failed at its first load.
    expected = [2 * i for i in range(1, 33)] + [0] * 32
    assert np.frombuffer(outcome.buffers[1], np.uint32).tolist() == expected
    assert ledger.usage("t").staged_bytes_current == 0
    again = dispatcher.execute("t", Batch("s2", regions, commands[:2], end_session=True))
    assert [r.code for r in again.results] == [0, 0]


def test_a_misaligned_access_is_a_launch_failure() -> None:
    ptx = DOUBLE.replace("mul.wide.u32 %rd3, %r5, 4;", "mul.wide.u32 %rd3, %r5, 2;")
    failure = _failure(
        _backend(),
        ptx,
        "double_it",
        arrays=[np.zeros(64, np.uint32), np.zeros(64, np.uint32)],
        scalars=(_u32(8),),
    )
    assert failure.code is AbiError.LAUNCH_FAILED
    assert "misaligned address" in failure.message and "thread (1, 0, 0)" in failure.message


def test_an_infinite_loop_is_stopped_at_the_deadline() -> None:
    ptx = HEADER + ".visible .entry spin()\n{\nSPIN:\n    bra SPIN;\n}\n"
    failure = _failure(_backend(timeout=0.2), ptx, "spin", arrays=[], scalars=())
    assert failure.code is AbiError.LAUNCH_FAILED
    assert "ran past its deadline" in failure.message


def test_a_grid_of_two_to_the_31_blocks_is_invalid_and_the_largest_grid_is_stopped() -> None:
    ptx = HEADER + ".visible .entry nothing()\n{\n    ret;\n}\n"
    too_big = _failure(_backend(), ptx, "nothing", arrays=[], scalars=(), grid=(2**31, 1, 1))
    assert too_big.code is AbiError.INVALID_DIMENSIONS
    largest = _failure(
        _backend(timeout=0.2),
        ptx,
        "nothing",
        arrays=[],
        scalars=(),
        grid=(2**31 - 1, 1, 1),
        block=(1024, 1, 1),
    )
    assert largest.code is AbiError.LAUNCH_FAILED and "deadline" in largest.message


@pytest.mark.parametrize(
    ("ptx", "entry", "code", "words"),
    [
        ("this is not ptx", "k", AbiError.MALFORMED_PTX, "malformed PTX"),
        (HEADER + ".visible .entry k()\n{\n    ret;\n", "k", AbiError.MALFORMED_PTX, "closing"),
        (
            HEADER + ".visible .entry k()\n{\n    bra NOWHERE;\n}\n",
            "k",
            AbiError.MALFORMED_PTX,
            "unknown label",
        ),
        (
            HEADER + ".visible .entry k()\n{\n    add.u32 %r1, %r2, 1;\n}\n",
            "k",
            AbiError.MALFORMED_PTX,
            "undeclared register %r1",
        ),
        (DOUBLE, "triple_it", AbiError.MALFORMED_PTX, "no kernel 'triple_it' in the PTX"),
        (
            HEADER
            + ".visible .entry k()\n{\n    .reg .b64 %rd<2>;\n    call.uni foo, (%rd1);\n}\n",
            "k",
            AbiError.NOT_AVAILABLE,
            "does not support line 7: the instruction `call.uni",
        ),
        (
            HEADER + ".visible .entry k()\n{\n    .shared .align 4 .b8 big[65536];\n    ret;\n}\n",
            "k",
            AbiError.MALFORMED_PTX,
            "65536 bytes of shared memory",
        ),
        (
            HEADER + ".visible .entry k()\n{\n    .local .align 4 .b8 big[1048576];\n    ret;\n}\n",
            "k",
            AbiError.MALFORMED_PTX,
            "1048576 bytes of local memory per thread",
        ),
        (
            HEADER + ".visible .entry k()\n{\n    .reg .b32 %r<100000000>;\n    ret;\n}\n",
            "k",
            AbiError.MALFORMED_PTX,
            "more than 65536 registers",
        ),
    ],
    ids=[
        "not-ptx",
        "unclosed",
        "label",
        "register",
        "entry",
        "unsupported",
        "static-shared",
        "local",
        "registers",
    ],
)
def test_bad_modules_are_refused_at_load(ptx: str, entry: str, code: AbiError, words: str) -> None:
    with pytest.raises(AbiFailure) as info:
        _backend().load(ptx.encode(), entry)
    assert info.value.code is code
    assert words in info.value.message


@pytest.mark.parametrize(
    ("scalars", "shared", "code", "words"),
    [
        ((), 0, AbiError.INVALID_ARGS, "declares 3 parameters"),
        ((ScalarArg(ArgTag.F32, 0),), 0, AbiError.INVALID_ARGS, "takes 4 bytes, got f32"),
        ((ScalarArg(ArgTag.U64, 1),), 0, AbiError.INVALID_ARGS, "got u64 (8 bytes)"),
        ((_u32(1),), (48 << 10) + 4, AbiError.LAUNCH_FAILED, "dynamic shared memory"),
    ],
    ids=["count", "type", "width", "dynamic-shared"],
)
def test_bad_launches_have_typed_codes(
    scalars: tuple[ScalarArg, ...], shared: int, code: AbiError, words: str
) -> None:
    failure = _failure(
        _backend(),
        DOUBLE,
        "double_it",
        arrays=[np.zeros(4, np.uint32), np.zeros(4, np.uint32)],
        scalars=scalars,
        shared=shared,
    )
    assert failure.code is code
    assert words in failure.message


# --- the differential check's machinery, with the NumPy references as the other side ------


def test_the_differential_report_finds_agreement_and_disagreement() -> None:
    reference = CpuBackend(kernels=CpuKernels.REFERENCE)
    library = library_cases()
    rows = differential.run(library, reference)
    assert [row.case for row in rows] == [f"library-{name}" for name in CATALOG]
    assert all(row.ok for row in rows), differential.format_rows(rows)
    by_case = {row.case: row for row in rows}
    assert by_case["library-vector_add"].largest_difference == 0  # elementwise: bit-exact
    # The references sum in f64, the PTX in f32: a difference, reported in ulps, in budget.
    assert by_case["library-matmul"].largest_difference > 0
    assert by_case["library-matmul"].unit == "ulps"
    # A kernel that computes something else misses its expectation: a failed row.
    wrong = replace(library[0], ptx=library[0].ptx.replace(b"add.f32", b"sub.f32"))
    (row,) = differential.run([wrong], reference)
    assert not row.device_ok and not row.ok
    assert "FAIL" in differential.format_rows([row])


def test_index_arithmetic_wraps_and_reversed_indices_store_as_on_a_gpu() -> None:
    # Thread indices stay symbolic while they are affine; a product that wraps in 32 bits
    # and a descending index must still give the GPU's answers.
    ptx = (
        HEADER
        + """
.visible .entry wrap(.param .u64 out, .param .u64 reversed)
{
    .reg .b32 %r<6>; .reg .b64 %rd<8>;
    ld.param.u64 %rd1, [out];
    ld.param.u64 %rd2, [reversed];
    mov.u32 %r1, %ctaid.x;
    mov.u32 %r2, %ntid.x;
    mov.u32 %r3, %tid.x;
    mad.lo.s32 %r4, %r1, %r2, %r3;
    mul.lo.u32 %r5, %r4, 1073741825;
    mul.wide.u32 %rd3, %r4, 4;
    add.s64 %rd4, %rd1, %rd3;
    st.global.u32 [%rd4], %r5;
    sub.s32 %r5, 255, %r4;
    mul.wide.s32 %rd5, %r5, 4;
    add.s64 %rd6, %rd2, %rd5;
    st.global.u32 [%rd6], %r4;
    ret;
}
"""
    )
    out, reversed_ = _launch(
        _backend(), ptx, "wrap", [np.zeros(256, np.uint32), np.zeros(256, np.uint32)], (),
        grid=(4, 1, 1), block=(64, 1, 1),
    )  # fmt: skip
    index = np.arange(256, dtype=np.uint64)
    assert out.tolist() == ((index * 1073741825) % 2**32).tolist()
    assert reversed_.tolist() == list(range(255, -1, -1))


def test_module_variables_start_from_their_initialisers_and_persist_across_launches() -> None:
    ptx = (
        HEADER
        + """
.global .align 4 .u32 launches = 40;
.const .align 4 .b8 table[8] = {1, 0, 0, 0, 2, 0, 0, 0};
.visible .entry count(.param .u64 out)
{
    .reg .b32 %r<4>; .reg .b64 %rd<4>;
    atom.global.add.u32 %r1, [launches], 1;
    ld.const.u32 %r2, [table+4];
    add.u32 %r3, %r1, %r2;
    ld.param.u64 %rd1, [out];
    st.global.u32 [%rd1], %r3;
    ret;
}
"""
    )
    backend = _backend()
    kernel = backend.load(ptx.encode(), "count")
    stream = backend.open_stream()
    out = backend.stage(bytes(4), stream, guest_offset=4096)
    seen = []
    for _ in range(3):
        backend.launch(stream, kernel, grid=(1, 1, 1), block=(1, 1, 1), shared_mem_bytes=0,
                       args=[BufferArg(out, 0, 4, guest_offset=4096)])  # fmt: skip
        seen.append(int(np.frombuffer(backend.read(out, stream), np.uint32)[0]))
    assert seen == [42, 43, 44]
    # Another load of the same module starts from the initialisers again.
    fresh = backend.load(ptx.encode(), "count")
    backend.launch(stream, fresh, grid=(1, 1, 1), block=(1, 1, 1), shared_mem_bytes=0,
                   args=[BufferArg(out, 0, 4, guest_offset=4096)])  # fmt: skip
    assert int(np.frombuffer(backend.read(out, stream), np.uint32)[0]) == 42
