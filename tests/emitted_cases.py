"""Launch cases of every jit-emitted kernel, with expectations computed by plain NumPy.

Shared by the cpu-backend test (tests/unit/dispatcher/test_emitted_kernels.py) and the GPU
test (tests/gpu/test_emitted_kernels_cuda.py): each case emits a kernel with the jit's
emitter, runs it through `Dispatcher.execute` on a backend and compares the buffers it
wrote with an expectation computed here, independently of the kernel library's references.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from tensorwasm_common.gpu_abi import ArgTag, BufferRef, ScalarArg
from tensorwasm_common.gpu_batch import Batch, BatchResult, LaunchKernel, LoadKernel, StagedRegion
from tensorwasm_dispatcher.batch_runner import Dispatcher
from tensorwasm_jit.ptx import KernelSpec, emit

Array = npt.NDArray[np.generic]


@dataclass(frozen=True)
class Case:
    """One launch: the spec, the pointer arguments, the scalars and what must come back."""

    name: str
    spec: KernelSpec
    arrays: tuple[Array, ...] = field(repr=False)
    scalars: tuple[ScalarArg, ...]
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    expected: dict[int, Array] = field(repr=False)
    rtol: float = 0.0
    atol: float = 0.0


def f32_arg(value: float) -> ScalarArg:
    return ScalarArg(ArgTag.F32, struct.unpack("<I", struct.pack("<f", value))[0])


def u32_arg(value: int) -> ScalarArg:
    return ScalarArg(ArgTag.U32, value)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _blocks(count: int, size: int) -> int:
    return max(1, -(-count // size))


_UNARY: dict[str, Callable[[Array], Array]] = {
    "relu": lambda x: np.where(x > 0, x, np.float32(0)),
    "neg": lambda x: -x,
    "abs": np.abs,
    "sqrt": np.sqrt,
    "exp": np.exp,
}
_BINARY: dict[str, Callable[[Array, Array], Array]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "max": np.maximum,
    "min": np.minimum,
}


def _elementwise_cases(target: str) -> list[Case]:
    cases = []
    n = 1000  # not a multiple of the block: the tail threads must do nothing
    for dtype, np_type in (("f32", np.float32), ("f16", np.float16)):
        rng = _rng(1)
        a = rng.uniform(0.5, 4.0, n).astype(np_type) * rng.choice([-1, 1], n).astype(np_type)
        b = rng.uniform(0.5, 4.0, n).astype(np_type)
        wide_a, wide_b = a.astype(np.float32), b.astype(np.float32)
        grid = (_blocks(n - 10, 128), 1, 1)  # covers only the first n - 10 + padding
        covered = min(n, grid[0] * 128)
        for op, function in {"vector_add": _BINARY["add"], **_BINARY}.items():
            out = np.full(n, 7, np_type)
            out[:covered] = function(wide_a[:covered], wide_b[:covered]).astype(np_type)
            spec = KernelSpec(op, {}, dtype, target)
            cases.append(
                Case(f"{op}-{dtype}", spec, (a, b, np.full(n, 7, np_type)), (u32_arg(n - 10),),
                     grid, (128, 1, 1), {2: _tail(out, n - 10, np_type)})
            )  # fmt: skip
        for op, unary in _UNARY.items():
            x = np.abs(a) if op == "sqrt" else a
            out = unary(x.astype(np.float32)).astype(np_type)
            # ex2.approx: ~2 f32 ulps; in f16 it may round one f16 ulp the other way.
            tolerance = (2e-6 if dtype == "f32" else 1e-3) if op == "exp" else 0.0
            spec = KernelSpec(op, {}, dtype, target)
            cases.append(
                Case(f"{op}-{dtype}", spec, (x, np.full(n, 7, np_type)), (u32_arg(n - 10),),
                     grid, (128, 1, 1),
                     {1: _tail(out, n - 10, np_type)}, rtol=tolerance)
            )  # fmt: skip
    # exp over (nearly) its whole finite range: x * log2(e) is rounded before ex2, so a
    # kernel that skips the argument reduction is off by up to 2^-17 relative near 88.
    wide = np.concatenate([_rng(4).uniform(-87.0, 88.5, n - 6), [-87.3, 88.7, 80.0, -80.0, 0, 1]])
    wide = wide.astype(np.float32)
    cases.append(
        Case("exp-wide-f32", KernelSpec("exp", {}, "f32", target),
             (wide, np.full(n, 7, np.float32)), (u32_arg(n),), (_blocks(n, 128), 1, 1), (128, 1, 1),
             {1: np.exp(wide.astype(np.float64)).astype(np.float32)}, rtol=1e-6)
    )  # fmt: skip
    rng = _rng(2)
    x, y = rng.standard_normal(n).astype(np.float32), rng.standard_normal(n).astype(np.float32)
    expected = (np.float64(1.5) * x + y).astype(np.float32)  # fma: rounded once
    cases.append(
        Case("saxpy-f32", KernelSpec("saxpy", {}, "f32", target), (x, y.copy()),
             (f32_arg(1.5), u32_arg(n)), (_blocks(n, 256), 1, 1), (256, 1, 1), {1: expected})
    )  # fmt: skip
    # y and z slices past the first do nothing: saxpy updates y in place, once.
    cases.append(
        Case("saxpy-f32-yz", KernelSpec("saxpy", {}, "f32", target), (x, y.copy()),
             (f32_arg(1.5), u32_arg(n)), (_blocks(n, 128), 2, 2), (128, 2, 2), {1: expected})
    )  # fmt: skip
    return cases


def _tail(out: Array, n: int, np_type: type[np.generic]) -> Array:
    """Elements from n on are untouched (still 7)."""
    result = out.copy()
    result[n:] = np_type(7)
    return result


def _blocked_cases(target: str) -> list[Case]:
    cases = []
    for m, n, k, tile in ((16, 16, 16, 16), (33, 17, 40, 8), (64, 48, 100, 32)):
        rng = _rng(m + n + k)
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        expected = (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32)
        cases.append(
            Case(f"matmul-{m}x{n}x{k}-t{tile}",
                 KernelSpec("matmul", {"m": m, "n": n, "k": k, "tile": tile}, "f32", target),
                 (a.ravel(), b.ravel(), np.zeros(m * n, np.float32)), (),
                 (_blocks(n, tile), _blocks(m, tile), 1), (tile, tile, 1),
                 {2: expected.ravel()}, rtol=1e-5, atol=1e-5)
        )  # fmt: skip
    for height, width in ((9, 13), (1, 5), (32, 32)):
        rng = _rng(height * width)
        image = rng.standard_normal((height, width)).astype(np.float32)
        weights = rng.standard_normal(9).astype(np.float32)
        padded = np.pad(image.astype(np.float64), 1)
        expected = np.zeros((height, width))
        for dr in range(3):
            for dc in range(3):
                expected += weights[dr * 3 + dc] * padded[dr : dr + height, dc : dc + width]
        cases.append(
            Case(f"conv2d-{height}x{width}",
                 KernelSpec("conv2d", {"height": height, "width": width}, "f32", target),
                 (image.ravel(), weights, np.zeros(height * width, np.float32)), (),
                 (_blocks(width, 16), _blocks(height, 8), 1), (16, 8, 1),
                 {2: expected.astype(np.float32).ravel()}, rtol=1e-5, atol=1e-5)
        )  # fmt: skip
    for count, block, grid in ((100_003, 256, 40), (5, 32, 1), (4096, 1024, 2)):
        values = _rng(count).standard_normal(count).astype(np.float32)
        start = np.array([2.5], np.float32)
        total = np.float32(2.5 + values.astype(np.float64).sum())
        cases.append(
            Case(f"reduce_sum-{count}-b{block}",
                 KernelSpec("reduce_sum", {"block": block}, "f32", target),
                 (values, start), (u32_arg(count),), (grid, 1, 1), (block, 1, 1),
                 {1: np.array([total])}, rtol=1e-5, atol=1e-3)
        )  # fmt: skip
    return cases


def all_cases(target: str = "sm_80") -> list[Case]:
    """Every case, for PTX emitted for `target`."""
    return _elementwise_cases(target) + _blocked_cases(target)


def run_case(dispatcher: Dispatcher, case: Case, session: str) -> BatchResult:
    """Loads the emitted kernel, stages the arrays, launches once, ends the session."""
    kernel = emit(case.spec)
    regions = tuple(
        StagedRegion(index, array.tobytes(), index << 20, True)
        for index, array in enumerate(case.arrays)
    )
    args = tuple(BufferRef(index, 0, array.nbytes) for index, array in enumerate(case.arrays))
    return dispatcher.execute(
        "tenant",
        Batch(
            session,
            regions,
            (
                LoadKernel(0, kernel.ptx.encode(), kernel.entry),
                LaunchKernel(0, case.grid, case.block, 0, (*args, *case.scalars)),
            ),
            end_session=True,
        ),
    )


def check_case(case: Case, outcome: BatchResult) -> None:
    """Asserts both commands succeeded and every expected buffer came back as expected."""
    assert [r.code for r in outcome.results] == [0, 0], outcome.results
    for index, expected in case.expected.items():
        got = np.frombuffer(outcome.buffers[index], dtype=expected.dtype)
        if case.rtol or case.atol:
            np.testing.assert_allclose(got, expected, rtol=case.rtol, atol=case.atol)
        else:
            np.testing.assert_array_equal(got, expected)
