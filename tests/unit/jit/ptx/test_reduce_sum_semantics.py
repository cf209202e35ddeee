"""The emitted reduce_sum PTX, executed instruction by instruction (`tests/ptx_simt.py`):
its grid-stride loop, shared-memory tree and `red.global.add` sum every input once, also
when grid.x * block reaches 2^32 (a u32 stride would be 0 there, and wrap above it)."""

from __future__ import annotations

import numpy as np
import pytest
from tensorwasm_jit.ptx import KernelSpec, emit

from tests import ptx_simt
from tests.emitted_cases import Case, all_cases

# The 100_003-element case takes seconds here; the others loop and reduce as well.
CASES = [c for c in all_cases() if c.spec.op == "reduce_sum" and c.arrays[0].size <= 4096]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_emitted_reduction_sums_its_input(case: Case) -> None:
    memory = ptx_simt.Memory.holding(case.arrays)
    (n,) = case.scalars
    ptx_simt.run(
        emit(case.spec).ptx, memory, [np.uint32(n.value)], grid=case.grid, block=case.block
    )
    np.testing.assert_allclose(
        memory.array(1, np.float32), case.expected[1], rtol=case.rtol, atol=case.atol
    )


def _reduce(values: np.ndarray, grid_x: int, blocks: list[int]) -> np.float32:  # type: ignore[type-arg]
    """Runs blocks `blocks` of a (grid_x, 1, 1) x (32, 1, 1) launch; returns output[0]."""
    memory = ptx_simt.Memory.holding([values, np.zeros(1, np.float32)])
    ptx = emit(KernelSpec("reduce_sum", {"block": 32}, "f32", "sm_80")).ptx
    ptx_simt.run(
        ptx, memory, [np.uint32(len(values))], grid=(grid_x, 1, 1), block=(32, 1, 1),
        blocks=[(x, 0, 0) for x in blocks], max_steps=20_000,
    )  # fmt: skip
    return np.float32(memory.array(1, np.float32)[0])


def test_a_stride_of_exactly_two_to_the_32_ends() -> None:
    # 2^27 blocks of 32: a u32 stride is 0 and thread 0 would add element 0 forever.
    values = np.arange(1, 101, dtype=np.float32)
    assert _reduce(values, 1 << 27, blocks=[0, 1, 2, 3]) == values.sum()


def test_a_stride_past_two_to_the_32_sums_each_element_once() -> None:
    # 2^27 + 1 blocks: a u32 stride is 32, so block 0 would go on to elements 32, 64, ...
    # that blocks 1..3 sum too, and block 2^27 (index 2^32, wrapped to 0) would add 0..31.
    values = np.arange(1, 129, dtype=np.float32)
    got = _reduce(values, (1 << 27) + 1, blocks=[0, 1, 2, 3, 1 << 27])
    assert got == values.sum()
