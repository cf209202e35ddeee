"""Translation of PTX's arithmetic and logic instructions into NumPy operations over the
threads.

Integer arithmetic wraps as on the GPU; floats follow IEEE round-to-nearest, which is what
`.rn` (and no rounding modifier) asks for. The `.approx` instructions are computed with
NumPy's correctly rounded or faithful functions, so they are at least as accurate as the
hardware's approximations (see docs/ARCHITECTURE.md for the budgets).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from tensorwasm_kernels.fp32 import fma_f32

from tensorwasm_dispatcher.backends.ptx.common import (
    BOOL_BINARY,
    Op,
    affine_combine,
    affine_scale,
    arity,
    compute,
    ftz,
    saturate,
    unsupported,
)
from tensorwasm_dispatcher.backends.ptx.integer_ops import (
    bfe,
    bfi,
    brev,
    clz,
    divide,
    integer_mul,
    popc,
    shift,
)
from tensorwasm_dispatcher.backends.ptx.operands import Operands, fit, parse_type
from tensorwasm_dispatcher.backends.ptx.parser import Instruction
from tensorwasm_dispatcher.backends.ptx.state import Affine, GroupState, Mask, Value, dense


def _fma(dtype: np.dtype[Any]) -> Callable[[Value, Value, Value], Value]:
    if dtype == np.float64:  # no fused f64 in NumPy: within 1 ulp of fma (documented)
        return lambda a, b, c: a * b + c
    if dtype == np.float32:  # rounded once, bit-exact
        return _fma_f32_value
    # f16: the product is exact in f64 and one f64 rounding is innocuous before f16's.
    return lambda a, b, c: (a.astype(np.float64) * b + c).astype(dtype)


def _two_sum(x: Value, y: Value) -> tuple[Value, Value]:
    total = x + y
    shift = total - x
    return total, (x - (total - shift)) + (y - shift)


def _directed_f32(name: str, mode: str) -> Callable[..., Value]:
    """f32 add/sub/mul/fma rounded toward zero (rz), -inf (rm) or +inf (rp), exactly.

    The f64 sum of the exact product and the addend, with its TwoSum error, is the exact
    result; the nearest f32 moves one step when it lies on the wrong side of it.
    """

    def run(*values: Value) -> Value:
        a, b = (np.asarray(v, np.float32).astype(np.float64) for v in values[:2])
        if name == "mul":
            total, error = a * b, np.zeros(np.shape(a * b))
            nearest = total.astype(np.float32)
        elif name in ("add", "sub"):
            total, error = _two_sum(a, b if name == "add" else -b)
            nearest = total.astype(np.float32)
        else:
            c = np.asarray(values[2], np.float32).astype(np.float64)
            total, error = _two_sum(a * b, c)
            nearest = fma_f32(values[0], values[1], values[2])
        above = (nearest.astype(np.float64) - total) - error  # > 0: nearest is above
        if mode == "rm":
            step = above > 0
            toward = np.float32(-np.inf)
        elif mode == "rp":
            step = above < 0
            toward = np.float32(np.inf)
        else:
            step = np.where(total >= 0, above > 0, above < 0)
            toward = np.float32(0)
        step &= np.isfinite(total)
        result = np.where(step, np.nextafter(nearest, toward), nearest).astype(np.float32)
        return result[()] if result.ndim == 0 else result

    return run


_LOW_29 = np.uint64((1 << 29) - 1)
_HALF_29 = np.uint64(1 << 28)
_SMALLEST_NORMAL_F32 = 2.0**-125


def _fma_f32_value(a: Value, b: Value, c: Value) -> Value:
    """fma.rn.f32, correctly rounded.

    The product of two f32 values is exact in f64 and rounding to nearest is monotonic, so
    the f64 sum rounds to the same f32 as the exact sum unless it lands exactly on a
    midpoint between two f32 values (or in f32's subnormal range, where the midpoints lie
    elsewhere); only those elements take the exact, slower path.
    """
    total = np.multiply(a, b, dtype=np.float64) + np.asarray(c, np.float64)
    result = np.asarray(total.astype(np.float32))
    suspicious = ((total.view(np.uint64) & _LOW_29) == _HALF_29) | (
        np.abs(total) < _SMALLEST_NORMAL_F32
    )
    if suspicious.any():
        if result.ndim == 0:
            return fma_f32(a, b, c)[()]
        exact = fma_f32(*(np.broadcast_to(v, result.shape)[suspicious] for v in (a, b, c)))
        result[suspicious] = exact
    return result[()] if result.ndim == 0 else result


_FLOAT_BINARY: dict[str, Callable[[Value, Value], Value]] = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
    "min": np.fmin, "max": np.fmax,
}  # fmt: skip
_FLOAT_UNARY: dict[str, Callable[[Value], Value]] = {
    "neg": np.negative, "abs": np.abs, "sqrt": np.sqrt,
    "rsqrt": lambda x: (x.dtype.type(1) / np.sqrt(x)).astype(x.dtype),
    "rcp": lambda x: (x.dtype.type(1) / x).astype(x.dtype),
    "ex2": np.exp2, "lg2": np.log2, "sin": np.sin, "cos": np.cos, "tanh": np.tanh,
}  # fmt: skip
_INT_BINARY: dict[str, Callable[[Value, Value], Value]] = {
    "add": np.add, "sub": np.subtract, "min": np.minimum, "max": np.maximum,
    "and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor,
}  # fmt: skip


def translate_arithmetic(instruction: Instruction, ops: Operands) -> Op | None:
    """The op for an arithmetic/logic/compare/convert instruction, or None if not one."""
    parts = instruction.opcode.split(".")
    name = parts[0]
    if name not in _ARITHMETIC_NAMES:
        return None
    dtype = parse_type(instruction, parts[-1])
    modifiers = set(parts[1:-1])
    if dtype.kind == "b":
        if name in BOOL_BINARY:
            return compute(ops, instruction, dtype, BOOL_BINARY[name], 2)
        if name == "not":
            return compute(ops, instruction, dtype, np.logical_not, 1)
        raise unsupported(instruction)
    if parts[-1] == "f16x2":
        return _packed_half_op(instruction, ops, name, modifiers)
    if dtype.kind == "f":
        return _float_op(instruction, ops, name, modifiers, dtype)
    return _integer_op(instruction, ops, name, modifiers, dtype)


_PACKED = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "min": np.fmin, "max": np.fmax,
    "neg": np.negative, "abs": np.abs,
}  # fmt: skip


def _packed_half_op(instruction: Instruction, ops: Operands, name: str, modifiers: set[str]) -> Op:
    """f16x2: two f16 values in each 32-bit register, computed lane by lane."""
    if modifiers - {"rn"} or (name not in _PACKED and name not in ("fma", "mad")):
        raise unsupported(instruction, "this packed f16x2 form")
    function = _PACKED.get(name) or _fma(np.dtype(np.float16))
    count = 3 if name in ("fma", "mad") else (1 if name in ("neg", "abs") else 2)

    def packed(*values: Value) -> Value:
        halves = [np.atleast_1d(np.asarray(v, np.uint32)).view(np.float16) for v in values]
        result = np.asarray(function(*halves), np.float16).view(np.uint32)
        scalar = all(np.ndim(v) == 0 for v in values)
        return result[0] if scalar else result

    return compute(ops, instruction, np.dtype(np.uint32), packed, count)


def _float_op(
    instruction: Instruction, ops: Operands, name: str, modifiers: set[str], dtype: np.dtype[Any]
) -> Op:
    known = {"rn", "rz", "rm", "rp", "ftz", "sat", "approx", "full", "NaN"}
    if modifiers - known:
        raise unsupported(instruction, f"the modifiers .{', .'.join(sorted(modifiers - known))}")
    directed = next((m for m in ("rz", "rm", "rp") if m in modifiers), None)
    if directed is not None and (
        dtype != np.float32 or name not in ("add", "sub", "mul", "fma", "mad")
    ):
        raise unsupported(instruction, f"directed rounding (.{directed}) of {name}")
    if "NaN" in modifiers:
        raise unsupported(instruction, ".NaN")
    steps: list[Callable[[Value], Value]] = []
    if "ftz" in modifiers and dtype == np.float32:
        steps.append(ftz)
    if "sat" in modifiers:
        steps.append(saturate)

    def finish(value: Value) -> Value:
        value = (
            np.asarray(value).astype(dtype)[()]
            if not isinstance(value, np.ndarray)
            else value.astype(dtype, copy=False)
        )
        for step in steps:
            value = step(value)
        return value

    if directed is not None:
        count = 3 if name in ("fma", "mad") else 2
        return compute(ops, instruction, dtype, _directed_f32(name, directed), count, finish)
    if name in _FLOAT_BINARY:
        return compute(ops, instruction, dtype, _FLOAT_BINARY[name], 2, finish)
    if name in ("fma", "mad"):
        return compute(ops, instruction, dtype, _fma(dtype), 3, finish)
    if name in _FLOAT_UNARY:
        function = _FLOAT_UNARY[name]
        if dtype == np.float16:
            base = function
            function = lambda x: base(x.astype(np.float32))  # noqa: E731
        return compute(ops, instruction, dtype, function, 1, finish)
    if name == "copysign":
        return compute(ops, instruction, dtype, lambda a, b: np.copysign(b, a), 2, finish)
    if name == "testp":
        raise unsupported(instruction)
    raise unsupported(instruction)


def _integer_op(  # noqa: PLR0911, PLR0912, PLR0915 - one branch per instruction form
    instruction: Instruction, ops: Operands, name: str, modifiers: set[str], dtype: np.dtype[Any]
) -> Op:
    mode = next((m for m in ("lo", "hi", "wide") if m in modifiers), None)
    extra = modifiers - {"lo", "hi", "wide", "sat", "cc"}
    if extra:
        raise unsupported(instruction, f"the modifiers .{', .'.join(sorted(extra))}")
    if name in ("add", "sub") and "sat" in modifiers:
        if dtype != np.int32:
            raise unsupported(instruction)
        wide = np.int64
        limit = (np.iinfo(np.int32).min, np.iinfo(np.int32).max)
        base = np.add if name == "add" else np.subtract
        return compute(
            ops,
            instruction,
            dtype,
            lambda a, b: np.clip(base(a.astype(wide), b), *limit).astype(dtype),
            2,
        )
    if name in ("add", "sub", "addc", "subc"):
        return _carry_op(instruction, ops, name, "cc" in modifiers, dtype)
    if name in _INT_BINARY:
        return compute(ops, instruction, dtype, _INT_BINARY[name], 2)
    if name == "mul":
        product = np.dtype(f"{dtype.kind}{dtype.itemsize * 2}") if mode == "wide" else dtype
        return compute(
            ops,
            instruction,
            dtype,
            integer_mul(mode or "lo", dtype),
            2,
            source_dtype=dtype,
            affine=affine_scale(product) if mode != "hi" else None,
        )
    if name == "mad":
        multiply = integer_mul(mode or "lo", dtype)
        if "sat" in modifiers:
            raise unsupported(instruction)
        target = np.dtype(f"{dtype.kind}{dtype.itemsize * 2}") if mode == "wide" else dtype
        write = ops.writer(instruction, instruction.operands[0])
        arity(instruction, 4)
        exact = mode != "hi"
        a, b = (ops.reader(instruction, t, dtype, affine=exact) for t in instruction.operands[1:3])
        c = ops.reader(instruction, instruction.operands[3], target, affine=exact)
        scale, combine = affine_scale(target), affine_combine(target, 1, 1)

        def mad(state: GroupState, mask: Mask) -> None:
            left, right, addend = a(state), b(state), c(state)
            if exact and any(isinstance(v, Affine) for v in (left, right, addend)):
                if not isinstance(left, Affine) and not isinstance(right, Affine):
                    product: Value | None = multiply(left, right)
                else:
                    product = scale(left, right)
                result = None if product is None else combine(product, addend)
                if result is not None:
                    write(state, result, mask)
                    return
                left, right, addend = dense(left), dense(right), dense(addend)
            write(state, (multiply(left, right) + addend).astype(target, copy=False), mask)

        return mad
    if name in ("div", "rem"):
        quotient, remainder = divide(dtype)
        return compute(ops, instruction, dtype, quotient if name == "div" else remainder, 2)
    if name in ("shl", "shr"):
        write = ops.writer(instruction, instruction.operands[0])
        arity(instruction, 3)
        source = ops.reader(instruction, instruction.operands[1], dtype, affine=name == "shl")
        amount = ops.reader(instruction, instruction.operands[2], np.dtype(np.uint32))
        shifted = shift(name, dtype)
        scale = affine_scale(dtype)

        def run_shift(state: GroupState, mask: Mask) -> None:
            value, count = source(state), amount(state)
            if isinstance(value, Affine):
                result = scale(value, 1 << int(count)) if np.ndim(count) == 0 else None
                if result is not None and int(count) < dtype.itemsize * 8:
                    write(state, result, mask)
                    return
                value = value.dense()
            write(state, shifted(value, count), mask)

        return run_shift
    if name == "neg":
        return compute(ops, instruction, dtype, lambda a: (dtype.type(0) - a).astype(dtype), 1)
    if name == "abs":
        return compute(ops, instruction, dtype, lambda a: np.abs(a).astype(dtype), 1)
    if name == "not":
        return compute(ops, instruction, dtype, np.invert, 1)
    if name == "cnot":
        return compute(ops, instruction, dtype, lambda a: (a == 0).astype(dtype), 1)
    if name == "popc":
        return compute(ops, instruction, dtype, popc, 1)
    if name == "clz":
        return compute(ops, instruction, dtype, clz(dtype), 1)
    if name == "brev":
        return compute(ops, instruction, dtype, brev(dtype), 1)
    if name == "bfe":
        write = ops.writer(instruction, instruction.operands[0])
        arity(instruction, 4)
        a = ops.reader(instruction, instruction.operands[1], dtype)
        p, n = (ops.reader(instruction, t, np.dtype(np.uint32)) for t in instruction.operands[2:])
        extract = bfe(dtype)
        return lambda state, mask: write(state, extract(a(state), p(state), n(state)), mask)
    if name == "bfi":
        write = ops.writer(instruction, instruction.operands[0])
        arity(instruction, 5)
        f, b = (ops.reader(instruction, t, dtype) for t in instruction.operands[1:3])
        p, n = (ops.reader(instruction, t, np.dtype(np.uint32)) for t in instruction.operands[3:])
        insert = bfi(dtype)
        return lambda state, mask: write(
            state, insert(f(state), b(state), p(state), n(state)), mask
        )
    if name == "prmt":
        return _prmt(instruction, ops, modifiers)
    raise unsupported(instruction)


def _carry_op(
    instruction: Instruction, ops: Operands, name: str, sets_carry: bool, dtype: np.dtype[Any]
) -> Op:
    arity(instruction, 3)
    write = ops.writer(instruction, instruction.operands[0])
    unsigned = np.dtype(f"u{dtype.itemsize}")
    a = ops.reader(instruction, instruction.operands[1], unsigned)
    b = ops.reader(instruction, instruction.operands[2], unsigned)
    uses_carry = name in ("addc", "subc")
    adding = name in ("add", "addc")
    if not uses_carry and not sets_carry:
        function = np.add if adding else np.subtract
        combine = affine_combine(dtype, 1, 1 if adding else -1)
        return compute(ops, instruction, dtype, function, 2, affine=combine)

    def run(state: GroupState, mask: Mask) -> None:
        left, right = a(state), b(state)
        carry_in = state.carry if uses_carry else np.False_
        addend = right + np.asarray(carry_in).astype(unsigned)
        if adding:
            result = left + addend
            carry = (result < left) | ((addend == 0) & np.asarray(carry_in) & (right != 0))
        else:
            result = left - addend
            carry = (left < addend) | ((addend == 0) & np.asarray(carry_in) & (right != 0))
        write(state, fit(result, dtype), mask)
        if sets_carry:
            state.carry = carry if mask is None else np.where(mask, carry, state.carry)

    return run


def _prmt(instruction: Instruction, ops: Operands, modifiers: set[str]) -> Op:
    if modifiers:
        raise unsupported(instruction, "prmt modes")
    arity(instruction, 4)
    write = ops.writer(instruction, instruction.operands[0])
    a, b, c = (ops.reader(instruction, t, np.dtype(np.uint32)) for t in instruction.operands[1:])

    def run(state: GroupState, mask: Mask) -> None:
        source = a(state).astype(np.uint64) | (b(state).astype(np.uint64) << np.uint64(32))
        selector = np.asarray(c(state)).astype(np.uint64)
        result = np.zeros(np.broadcast(source, selector).shape, np.uint64)
        for byte in range(4):
            nibble = (selector >> np.uint64(4 * byte)) & np.uint64(0xF)
            index = nibble & np.uint64(7)
            value = (source >> (index * np.uint64(8))) & np.uint64(0xFF)
            value = np.where(
                nibble & np.uint64(8),
                np.where(value & np.uint64(0x80), np.uint64(0xFF), np.uint64(0)),
                value,
            )
            result |= value << np.uint64(8 * byte)
        write(state, result.astype(np.uint32), mask)

    return run


_ARITHMETIC_NAMES = {
    "add", "sub", "mul", "mad", "fma", "div", "rem", "min", "max", "neg", "abs", "and", "or",
    "xor", "not", "cnot", "shl", "shr", "popc", "clz", "brev", "bfe", "bfi", "prmt", "sqrt",
    "rsqrt", "rcp", "ex2", "lg2", "sin", "cos", "tanh", "copysign", "testp", "addc", "subc",
}  # fmt: skip
