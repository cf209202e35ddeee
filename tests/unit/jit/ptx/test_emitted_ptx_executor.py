"""The emitted elementwise PTX, executed by the dispatcher's PTX executor (the product
code the cpu backend runs), computes its NumPy meaning; and a wrong instruction is caught.

The executor runs the emitted kernel body itself on the launch cases the GPU test uses
(`tests.emitted_cases`), so an emitter that swapped an operand, lost a bounds check or
loaded at the wrong width fails here, long before a GPU sees it.
"""

from __future__ import annotations

import numpy as np
import pytest
from tensorwasm_dispatcher.backends.cpu import CpuBackend
from tensorwasm_jit.ptx import emit
from tensorwasm_jit.ptx.elementwise import BINARY_OPS, UNARY_OPS

from tests.emitted_cases import Case, all_cases
from tests.ptx_kernels.cases import PtxCase, run_case

ELEMENTWISE_OPS = {"vector_add", "saxpy", *UNARY_OPS, *BINARY_OPS}
CASES = [case for case in all_cases() if case.spec.op in ELEMENTWISE_OPS]


def _run(case: Case, ptx: str) -> list[np.ndarray]:
    arguments = (*range(len(case.arrays)), *case.scalars)
    launch = PtxCase(case.name, ptx.encode(), emit(case.spec).entry, case.arrays, arguments,
                     case.grid, case.block, {})  # fmt: skip
    return run_case(CpuBackend(), launch)


def _matches(case: Case, written: list[np.ndarray]) -> bool:
    for index, expected in case.expected.items():
        got = written[index]
        if case.rtol or case.atol:
            if not np.allclose(got, expected, rtol=case.rtol, atol=case.atol):
                return False
        elif not np.array_equal(got, expected):
            return False
    return True


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_emitted_ptx_computes_its_numpy_meaning(case: Case) -> None:
    assert _matches(case, _run(case, emit(case.spec).ptx)), case.name


@pytest.mark.parametrize(
    ("name", "original", "mutant"),
    [
        ("sub-f32", "sub.rn.f32 %f2, %f1, %f3", "sub.rn.f32 %f2, %f3, %f1"),
        ("relu-f16", "setp.ge.u64", "setp.gt.u64"),  # the tail thread writes past n
        ("vector_add-f16", "ld.global.b16", "ld.global.u8"),
    ],
)
def test_a_wrong_instruction_is_caught(name: str, original: str, mutant: str) -> None:
    case = next(c for c in CASES if c.name == name)
    ptx = emit(case.spec).ptx
    assert original in ptx
    mutated = ptx.replace(original, mutant, 1)
    assert not _matches(case, _run(case, mutated))


def test_every_elementwise_op_and_dtype_has_a_case() -> None:
    assert {case.spec.op for case in CASES} == ELEMENTWISE_OPS
    assert {case.spec.dtype for case in CASES if case.spec.op != "saxpy"} == {"f32", "f16"}
