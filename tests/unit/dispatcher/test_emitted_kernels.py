"""Every kernel the jit cache emits runs on the dispatcher's cpu backend and matches NumPy,
both as PTX (through the PTX executor) and by the kernel library's references; under
references the cpu backend recognises emitted modules by their marker and entry only."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tensorwasm_common.gpu_abi import AbiError, ArgTag, BufferRef, ScalarArg
from tensorwasm_common.gpu_batch import Batch, LaunchKernel, LoadKernel, StagedRegion
from tensorwasm_dispatcher.accounting import Ledger
from tensorwasm_dispatcher.backends.cpu import CpuBackend, CpuKernels, _CpuKernel, _PtxKernel
from tensorwasm_dispatcher.batch_runner import Dispatcher
from tensorwasm_dispatcher.gpu_sessions import GpuSessionTable
from tensorwasm_jit.ptx import EMITTERS, KernelSpec, emit
from tensorwasm_kernels.emitted import lookup_emitted

from tests.emitted_cases import Case, all_cases, check_case, run_case

CASES = all_cases()


def _dispatcher(kernels: CpuKernels = CpuKernels.PTX) -> Dispatcher:
    backend = CpuBackend(kernels=kernels)
    return Dispatcher(backend, Ledger(1 << 30), GpuSessionTable(backend, idle_ttl_seconds=60))


@pytest.mark.parametrize("kernels", list(CpuKernels))
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_emitted_kernel_matches_numpy_on_the_cpu_backend(case: Case, kernels: CpuKernels) -> None:
    # PTX: the emitted PTX itself, executed; reference: the kernel library's NumPy oracle.
    check_case(case, run_case(_dispatcher(kernels), case, case.name))


def test_every_emitter_has_a_case() -> None:
    emit(KernelSpec("vector_add", {}, "f32", "sm_80"))  # fills the registry
    assert {case.spec.op for case in CASES} == set(EMITTERS)
    for op, emitter in EMITTERS.items():
        assert {c.spec.dtype for c in CASES if c.spec.op == op} == set(emitter.dtypes), op


def test_lookup_needs_the_emitters_entry_and_a_valid_marker() -> None:
    kernel = emit(KernelSpec("matmul", {"m": 4, "n": 4, "k": 4}, "f32", "sm_90"))
    assert kernel.entry == "tw_matmul_f32_k4_m4_n4_tile16"
    spec = lookup_emitted(kernel.ptx, kernel.entry)
    assert spec is not None and spec.entry == kernel.entry
    assert lookup_emitted(kernel.ptx, "tw_matmul_f32_k4_m4_n4_tile8") is None
    marker, rest = kernel.ptx.split("\n", 1)
    payload = json.loads(marker.split(" ", 2)[2])
    for change in ({"emitter_version": 1}, {"op": "nope"}, {"params": {"m": 4}}):
        forged = [*marker.split(" ", 2)[:2], json.dumps({**payload, **change})]
        assert lookup_emitted(" ".join(forged) + "\n" + rest, kernel.entry) is None, change
    assert lookup_emitted(rest, kernel.entry) is None  # no marker
    assert lookup_emitted("// tensorwasm-jit-kernel {not json\n", kernel.entry) is None


def test_emitted_ptx_without_its_marker_runs_as_ptx_under_references() -> None:
    kernel = emit(KernelSpec("relu", {}, "f32", "sm_80"))
    backend = CpuBackend(kernels=CpuKernels.REFERENCE)
    recognised = backend.load(kernel.ptx.encode(), kernel.entry)
    assert isinstance(recognised, _CpuKernel) and recognised.entry == kernel.entry
    unmarked = backend.load(kernel.ptx.split("\n", 1)[1].encode(), kernel.entry)
    assert isinstance(unmarked, _PtxKernel) and unmarked.entry == kernel.entry
    assert isinstance(CpuBackend().load(kernel.ptx.encode(), kernel.entry), _PtxKernel)


def test_a_launch_with_the_wrong_argument_count_fails_with_invalid_args() -> None:
    case = next(c for c in CASES if c.name == "relu-f32")
    short = Case(case.name, case.spec, case.arrays, (), case.grid, case.block, {})
    outcome = run_case(_dispatcher(), short, "short")
    assert outcome.results[1].code == AbiError.INVALID_ARGS


@pytest.mark.parametrize(
    ("grid", "block", "kernels"),
    [
        # 2^32 threads are far past what the PTX executor runs in a test: the reference.
        (((1 << 25) + 1, 1, 1), (128, 1, 1), CpuKernels.REFERENCE),
        ((3, 2, 2), (128, 2, 1), CpuKernels.REFERENCE),
        ((3, 2, 2), (128, 2, 1), CpuKernels.PTX),
    ],
    ids=["past-2^32-threads", "y-and-z-slices", "y-and-z-slices-ptx"],
)
def test_an_in_place_op_applies_once_on_the_cpu_backend_as_in_the_ptx(
    grid: tuple[int, int, int], block: tuple[int, int, int], kernels: CpuKernels
) -> None:
    # The PTX's 64-bit index and y/z guard (tests/unit/jit/ptx/test_elementwise_semantics.py
    # runs the same launches instruction by instruction): the cpu reference agrees.
    x = np.arange(1, 257, dtype=np.float32)
    kernel = emit(KernelSpec("neg", {}, "f32", "sm_80"))
    same = BufferRef(0, 0, x.nbytes)
    batch = Batch(
        "s",
        (StagedRegion(0, x.tobytes(), 0, True),),
        (
            LoadKernel(0, kernel.ptx.encode(), kernel.entry),
            LaunchKernel(0, grid, block, 0, (same, same, ScalarArg(ArgTag.U32, 256))),
        ),
        end_session=True,
    )
    outcome = _dispatcher(kernels).execute("t", batch)
    assert [r.code for r in outcome.results] == [0, 0]
    np.testing.assert_array_equal(np.frombuffer(outcome.buffers[0], np.float32), -x)
