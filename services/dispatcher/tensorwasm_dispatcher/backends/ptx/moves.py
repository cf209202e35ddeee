"""Translation of comparisons, selections, moves and conversions: `setp`, `selp`, `mov`
(with vector pack and unpack), `cvta` and `cvt` between every integer and float width."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tensorwasm_dispatcher.backends.ptx.common import (
    BOOL_BINARY,
    INT_ROUNDING,
    Op,
    affine_combine,
    arity,
    compute,
    ftz,
    saturate,
    unsupported,
)
from tensorwasm_dispatcher.backends.ptx.operands import Operands, fit, parse_type
from tensorwasm_dispatcher.backends.ptx.parser import Instruction
from tensorwasm_dispatcher.backends.ptx.state import (
    LOCAL_WINDOW,
    SHARED_WINDOW,
    GroupState,
    Mask,
    Value,
)

_COMPARE: dict[str, Callable[[Value, Value], Value]] = {
    "eq": np.equal, "lt": np.less, "le": np.less_equal, "gt": np.greater,
    "ge": np.greater_equal, "lo": np.less, "ls": np.less_equal, "hi": np.greater,
    "hs": np.greater_equal,
    "ne": lambda a, b: (a != b) & ~(_isnan(a) | _isnan(b)),
    "equ": lambda a, b: (a == b) | _isnan(a) | _isnan(b),
    "neu": np.not_equal,
    "ltu": lambda a, b: ~(a >= b), "leu": lambda a, b: ~(a > b),
    "gtu": lambda a, b: ~(a <= b), "geu": lambda a, b: ~(a < b),
    "num": lambda a, b: ~(_isnan(a) | _isnan(b)),
    "nan": lambda a, b: _isnan(a) | _isnan(b),
}  # fmt: skip


def _isnan(value: Value) -> Value:
    return np.isnan(value) if value.dtype.kind == "f" else np.zeros(np.shape(value), np.bool_)


def _setp(instruction: Instruction, ops: Operands, parts: list[str]) -> Op:
    dtype = parse_type(instruction, parts[-1])
    compare = parts[1]
    if compare not in _COMPARE:
        raise unsupported(instruction)
    function = np.not_equal if dtype.kind != "f" and compare == "ne" else _COMPARE[compare]
    combiner = BOOL_BINARY.get(parts[2]) if len(parts) > 3 and parts[2] != "ftz" else None
    targets = instruction.operands[0].split("|")
    write_p = ops.writer(instruction, targets[0])
    write_q = ops.writer(instruction, targets[1]) if len(targets) > 1 else None
    arity(instruction, 4 if combiner else 3)
    a = ops.reader(instruction, instruction.operands[1], dtype)
    b = ops.reader(instruction, instruction.operands[2], dtype)
    c = ops.reader(instruction, instruction.operands[3], np.dtype(np.bool_)) if combiner else None

    def run(state: GroupState, mask: Mask) -> None:
        truth = function(a(state), b(state))
        if combiner is not None and c is not None:
            other = c(state)
            write_p(state, combiner(truth, other), mask)
            if write_q is not None:
                write_q(state, combiner(np.logical_not(truth), other), mask)
            return
        write_p(state, truth, mask)
        if write_q is not None:
            write_q(state, np.logical_not(truth), mask)

    return run


def _selp(instruction: Instruction, ops: Operands, parts: list[str]) -> Op:
    dtype = parse_type(instruction, parts[-1])
    arity(instruction, 4)
    write = ops.writer(instruction, instruction.operands[0])
    a, b = (ops.reader(instruction, t, dtype) for t in instruction.operands[1:3])
    c = ops.reader(instruction, instruction.operands[3], np.dtype(np.bool_))
    return lambda state, mask: write(state, np.where(c(state), a(state), b(state)), mask)


def _mov(instruction: Instruction, ops: Operands, parts: list[str]) -> Op:
    dtype = parse_type(instruction, parts[-1])
    arity(instruction, 2)
    target, source = instruction.operands
    if source.startswith("{"):  # pack: mov.b64 %rd, {%r1, %r2}
        pieces = [p.strip() for p in source.strip("{}").split(",")]
        piece = np.dtype(f"u{dtype.itemsize // len(pieces)}")
        readers = [ops.reader(instruction, p, piece) for p in pieces]
        write = ops.writer(instruction, target)
        unsigned = np.dtype(f"u{dtype.itemsize}")
        step = unsigned.type(piece.itemsize * 8)

        def pack(state: GroupState, mask: Mask) -> None:
            value = unsigned.type(0)
            for index, read in enumerate(readers):
                value = value | (
                    np.asarray(read(state)).astype(unsigned) << (step * unsigned.type(index))
                )
            write(state, value, mask)

        return pack
    if target.startswith("{"):  # unpack: mov.b64 {%r1, %r2}, %rd
        pieces = [p.strip() for p in target.strip("{}").split(",")]
        piece = np.dtype(f"u{dtype.itemsize // len(pieces)}")
        writers = [ops.writer(instruction, p) for p in pieces]
        unsigned = np.dtype(f"u{dtype.itemsize}")
        read = ops.reader(instruction, source, unsigned)
        step = unsigned.type(piece.itemsize * 8)

        def unpack(state: GroupState, mask: Mask) -> None:
            value = read(state)
            for index, write_piece in enumerate(writers):
                write_piece(
                    state, np.asarray(value >> (step * unsigned.type(index))).astype(piece), mask
                )

        return unpack
    return compute(ops, instruction, dtype, lambda x: x, 1, affine=lambda x: x)


def _cvta(instruction: Instruction, ops: Operands, parts: list[str]) -> Op:
    dtype = parse_type(instruction, parts[-1])
    to_space = parts[1] == "to"
    space = parts[2] if to_space else parts[1]
    window = {"global": 0, "shared": SHARED_WINDOW, "local": LOCAL_WINDOW}.get(space)
    if window is None:
        raise unsupported(instruction)
    delta = np.uint64(window)
    u64 = np.dtype(np.uint64)
    move = affine_combine(u64, 1, -1 if to_space else 1)
    if to_space:
        return compute(ops, instruction, u64, lambda x: (x - delta) if window else x, 1,
                       lambda v: fit(v, dtype), affine=lambda x: move(x, delta))  # fmt: skip
    return compute(ops, instruction, u64, lambda x: x + delta, 1,
                   affine=lambda x: move(x, delta))  # fmt: skip


def _cvt(instruction: Instruction, ops: Operands, parts: list[str]) -> Op:
    target_type, source_type = parts[-2], parts[-1]
    target = parse_type(instruction, target_type)
    source = parse_type(instruction, source_type)
    modifiers = set(parts[1:-2])
    extra = modifiers - {"rn", "rz", "rm", "rp", "rni", "rzi", "rmi", "rpi", "ftz", "sat"}
    if extra:
        raise unsupported(instruction)
    steps: list[Callable[[Value], Value]] = []
    int_rounding = next((INT_ROUNDING[m] for m in modifiers if m in INT_ROUNDING), None)
    if modifiers & {"rz", "rm", "rp"}:
        exact = target.kind != "f" or (source.kind == "f" and source.itemsize <= target.itemsize)
        if not exact:
            raise unsupported(instruction, "directed rounding")
    if target.kind == "f":
        if int_rounding is not None:
            steps.append(int_rounding)
        steps.append(lambda v: v.astype(target))
        if "ftz" in modifiers and target == np.float32:
            steps.append(ftz)
        if "sat" in modifiers:
            steps.append(saturate)
    elif source.kind == "f":
        rounding = int_rounding or np.trunc
        info = np.iinfo(target)
        low, high = float(info.min), float(info.max)

        def to_int(value: Value) -> Value:
            rounded = rounding(np.asarray(value).astype(np.float64))
            nan = np.isnan(rounded)
            clipped = np.clip(np.where(nan, 0.0, rounded), low, high)
            result = np.where(
                clipped >= high,
                info.max,
                clipped.astype(np.int64)
                if target.kind == "i" or target.itemsize < 8
                else clipped.astype(np.uint64),
            )
            return np.asarray(result).astype(target)

        steps.append(to_int)
    elif "sat" in modifiers:
        info = np.iinfo(target)
        steps.append(
            lambda v: np.clip(
                np.asarray(v).astype(np.float64)
                if v.dtype.itemsize == 8 and v.dtype.kind != target.kind
                else v,
                info.min,
                info.max,
            ).astype(target)
        )
    else:
        steps.append(lambda v: np.asarray(v).astype(target))

    def convert(value: Value) -> Value:
        for step in steps:
            value = step(value)
        return value[()] if isinstance(value, np.ndarray) and value.ndim == 0 else value

    integral = target.kind in "iu" and source.kind in "iu"
    return compute(ops, instruction, target, convert, 1, source_dtype=source,
                   affine=(lambda x: x.cast(target)) if integral else None)  # fmt: skip


TRANSLATORS: dict[str, Callable[[Instruction, Operands, list[str]], Op]] = {
    "cvt": _cvt, "setp": _setp, "selp": _selp, "mov": _mov, "cvta": _cvta,
}  # fmt: skip


def translate_move(instruction: Instruction, ops: Operands) -> Op | None:
    """The op for a setp/selp/mov/cvta/cvt instruction, or None if not one."""
    parts = instruction.opcode.split(".")
    translator = TRANSLATORS.get(parts[0])
    return None if translator is None else translator(instruction, ops, parts)
