"""The emitted elementwise PTX computes what its NumPy meaning says, executed instruction by
instruction.

The cpu backend runs NumPy for emitted kernels and never reads their PTX, so a wrong
instruction (say `sub` with its operands swapped) would pass every cpu test. Here the SIMT
interpreter of `tests/ptx_simt.py` runs the emitted kernel body itself, all threads of the
launch at once, on the launch cases the GPU test uses (`tests.emitted_cases`), and compares
the buffers it writes with their expectations. Launches with y/z slices and with more than
2^32 threads check the guard and the 64-bit index: the cpu reference applies each element
once, and so must the PTX.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from tensorwasm_common.gpu_abi import ArgTag, ScalarArg
from tensorwasm_jit.ptx import KernelSpec, emit
from tensorwasm_jit.ptx.elementwise import BINARY_OPS, UNARY_OPS

from tests import ptx_simt
from tests.emitted_cases import Case, all_cases

ELEMENTWISE_OPS = {"vector_add", "saxpy", *UNARY_OPS, *BINARY_OPS}
CASES = [case for case in all_cases() if case.spec.op in ELEMENTWISE_OPS]


def _scalar(scalar: ScalarArg) -> np.uint32 | np.float32:
    if scalar.tag is ArgTag.F32:
        return np.float32(struct.unpack("<f", struct.pack("<I", scalar.value))[0])
    assert scalar.tag is ArgTag.U32, scalar
    return np.uint32(scalar.value)


def run_case(case: Case) -> list[np.ndarray]:  # type: ignore[type-arg]
    """Runs the emitted kernel for `case`'s whole launch; returns its buffers as written."""
    memory = ptx_simt.Memory.holding(case.arrays)
    ptx_simt.run(
        emit(case.spec).ptx, memory, [_scalar(s) for s in case.scalars],
        grid=case.grid, block=case.block,
    )  # fmt: skip
    return [memory.array(i, array.dtype) for i, array in enumerate(case.arrays)]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_emitted_ptx_computes_its_numpy_meaning(case: Case) -> None:
    written = run_case(case)
    for index, expected in case.expected.items():
        got = written[index]
        if case.rtol or case.atol:
            np.testing.assert_allclose(got, expected, rtol=case.rtol, atol=case.atol)
        else:
            np.testing.assert_array_equal(got, expected, err_msg=case.name)


def test_every_elementwise_op_and_dtype_has_a_case() -> None:
    # The ops the emitter registers and the cases' ops agree (test_emitted_kernels checks
    # that every emitter has a case); here, that no elementwise case is left out.
    assert {case.spec.op for case in CASES} == ELEMENTWISE_OPS
    assert {case.spec.dtype for case in CASES if case.spec.op != "saxpy"} == {"f32", "f16"}
    assert any(case.grid[1:] != (1, 1) and case.block[1:] != (1, 1) for case in CASES)


@pytest.mark.parametrize("op", ["neg", "sqrt", "exp"])
def test_an_in_place_unary_op_with_y_and_z_slices_applies_once(op: str) -> None:
    # y and x the same buffer: each extra slice that ran would apply the op again.
    x = np.linspace(0.25, 4.0, 300, dtype=np.float32)
    memory = ptx_simt.Memory.holding([x])
    ptx = emit(KernelSpec(op, {}, "f32", "sm_80")).ptx
    kernel = ptx_simt.Kernel.parse(ptx)
    assert [name for name, _ in kernel.params] == ["x", "y", "n"]
    aliased = ptx_simt.Memory(memory.data, [memory.buffers[0], memory.buffers[0]])
    ptx_simt.run(ptx, aliased, [np.uint32(300)], grid=(3, 2, 2), block=(128, 2, 1))
    expected = {"neg": np.negative, "sqrt": np.sqrt, "exp": np.exp}[op](x.astype(np.float64))
    np.testing.assert_allclose(memory.array(0, np.float32), expected, rtol=1e-6)


def test_threads_past_two_to_the_32_do_not_wrap_onto_the_first_elements() -> None:
    # grid.x * block.x = 2^32 + 128: with a u32 index the last block's threads would be
    # i = 0..127 again and negate those elements a second time (back to themselves).
    x = np.arange(1, 257, dtype=np.float32)
    memory = ptx_simt.Memory.holding([x])
    aliased = ptx_simt.Memory(memory.data, [memory.buffers[0], memory.buffers[0]])
    ptx = emit(KernelSpec("neg", {}, "f32", "sm_80")).ptx
    last = (1 << 25, 0, 0)
    ptx_simt.run(
        ptx, aliased, [np.uint32(256)], grid=((1 << 25) + 1, 1, 1), block=(128, 1, 1),
        blocks=[(0, 0, 0), (1, 0, 0), last],
    )  # fmt: skip
    np.testing.assert_array_equal(memory.array(0, np.float32), -x)
