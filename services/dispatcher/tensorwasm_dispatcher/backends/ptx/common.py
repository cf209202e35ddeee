"""What every instruction translator shares: the op type, error helpers, float flushing
and saturation, and `compute`, which turns a NumPy function into an op on registers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tensorwasm_dispatcher.backends.ptx.operands import Operands
from tensorwasm_dispatcher.backends.ptx.parser import (
    Instruction,
    PtxSyntaxError,
    PtxUnsupportedError,
)
from tensorwasm_dispatcher.backends.ptx.state import Affine, GroupState, Mask, Value, dense

Op = Callable[[GroupState, Mask], None]
_F32_TINY = np.float32(1.17549435e-38)
INT_ROUNDING = {"rni": np.rint, "rzi": np.trunc, "rmi": np.floor, "rpi": np.ceil}


def unsupported(instruction: Instruction, what: str = "") -> PtxUnsupportedError:
    detail = f" ({what})" if what else ""
    return PtxUnsupportedError(f"line {instruction.line}: `{instruction.text}`{detail}")


def arity(instruction: Instruction, count: int) -> None:
    if len(instruction.operands) != count:
        raise PtxSyntaxError(
            f"line {instruction.line}: `{instruction.text}` takes {count} operands"
        )


def ftz(value: Value) -> Value:
    return np.where(np.abs(value) < _F32_TINY, np.copysign(np.float32(0), value), value)


def saturate(value: Value) -> Value:
    return np.where(np.isnan(value), value.dtype.type(0), np.clip(value, 0, 1)).astype(value.dtype)


BOOL_BINARY: dict[str, Callable[[Value, Value], Value]] = {
    "and": np.logical_and,
    "or": np.logical_or,
    "xor": np.logical_xor,
}


def compute(  # noqa: PLR0917 - one branch per instruction form
    ops: Operands,
    instruction: Instruction,
    dtype: np.dtype[Any],
    function: Callable[..., Value],
    count: int,
    finish: Callable[[Value], Value] | None = None,
    source_dtype: np.dtype[Any] | None = None,
    affine: Callable[..., Value | None] | None = None,
) -> Op:
    """d = function(sources...) on the active threads.

    `affine`, if given, computes the result from operands of which some are `Affine`
    (exactly, or None when it cannot); otherwise every operand is expanded first.
    """
    arity(instruction, count + 1)
    write = ops.writer(instruction, instruction.operands[0])
    readers = [
        ops.reader(instruction, text, source_dtype or dtype, affine=affine is not None)
        for text in instruction.operands[1:]
    ]

    def run(values: list[Value]) -> Value:
        if affine is not None and any(isinstance(v, Affine) for v in values):
            result = affine(*values)
            if result is not None:
                return result
            values = [dense(v) for v in values]
        result = function(*values)
        return finish(result) if finish else result

    if count == 1:
        (first,) = readers
        return lambda state, mask: write(state, run([first(state)]), mask)
    if count == 2:
        left, right = readers
        return lambda state, mask: write(state, run([left(state), right(state)]), mask)

    def general(state: GroupState, mask: Mask) -> None:
        write(state, run([read(state) for read in readers]), mask)

    return general


def affine_combine(dtype: np.dtype[Any], scale_a: int, scale_b: int) -> Callable[..., Value | None]:
    """scale_a * a + scale_b * b for integers of which one or both are affine."""

    def combine(a: Value, b: Value) -> Value | None:
        terms: list[tuple[int, int, int, Affine | None]] = []
        for value, scale in ((a, scale_a), (b, scale_b)):
            if isinstance(value, Affine):
                terms.append((value.start * scale, value.block_step * scale,
                              value.thread_step * scale, value))  # fmt: skip
            elif np.ndim(value) == 0:
                terms.append((int(value) * scale, 0, 0, None))
            else:
                return None
        shape = next(t[3] for t in terms if t[3] is not None)
        return Affine.make(sum(t[0] for t in terms), sum(t[1] for t in terms),
                           sum(t[2] for t in terms), dtype, shape.blocks,
                           shape.block_threads)  # fmt: skip

    return combine


def affine_scale(dtype: np.dtype[Any]) -> Callable[..., Value | None]:
    """a * b (exactly, as integers) where one is affine and the other one number."""

    def scale(a: Value, b: Value) -> Value | None:
        if isinstance(b, Affine):
            a, b = b, a
        if not isinstance(a, Affine) or np.ndim(b) != 0:
            return None
        factor = int(b)
        return Affine.make(a.start * factor, a.block_step * factor, a.thread_step * factor,
                           dtype, a.blocks, a.block_threads)  # fmt: skip

    return scale
