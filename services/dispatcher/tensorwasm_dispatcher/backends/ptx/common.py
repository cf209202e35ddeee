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
from tensorwasm_dispatcher.backends.ptx.state import GroupState, Mask, Value

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
) -> Op:
    """d = function(sources...) on the active threads."""
    arity(instruction, count + 1)
    write = ops.writer(instruction, instruction.operands[0])
    readers = [
        ops.reader(instruction, text, source_dtype or dtype) for text in instruction.operands[1:]
    ]
    if count == 1:
        (first,) = readers

        def unary(state: GroupState, mask: Mask) -> None:
            result = function(first(state))
            write(state, finish(result) if finish else result, mask)

        return unary
    if count == 2:
        left, right = readers

        def binary(state: GroupState, mask: Mask) -> None:
            result = function(left(state), right(state))
            write(state, finish(result) if finish else result, mask)

        return binary

    def general(state: GroupState, mask: Mask) -> None:
        result = function(*(read(state) for read in readers))
        write(state, finish(result) if finish else result, mask)

    return general
