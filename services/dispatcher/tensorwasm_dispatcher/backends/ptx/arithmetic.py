"""Translation of PTX's arithmetic, logic, comparison and conversion instructions into
NumPy operations over the threads.

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

from tensorwasm_dispatcher.backends.ptx.operands import Operands, fit, parse_type
from tensorwasm_dispatcher.backends.ptx.parser import (
    Instruction,
    PtxSyntaxError,
    PtxUnsupportedError,
)
from tensorwasm_dispatcher.backends.ptx.state import (
    LOCAL_WINDOW,
    SHARED_WINDOW,
    GroupState,
    Mask,
    Value,
)

Op = Callable[[GroupState, Mask], None]
_F32_TINY = np.float32(1.17549435e-38)
_ROUNDING = {"rn", "rz", "rm", "rp"}
_INT_ROUNDING = {"rni": np.rint, "rzi": np.trunc, "rmi": np.floor, "rpi": np.ceil}
_M32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)


def _unsupported(instruction: Instruction, what: str = "") -> PtxUnsupportedError:
    detail = f" ({what})" if what else ""
    return PtxUnsupportedError(f"line {instruction.line}: `{instruction.text}`{detail}")


def _arity(instruction: Instruction, count: int) -> None:
    if len(instruction.operands) != count:
        raise PtxSyntaxError(
            f"line {instruction.line}: `{instruction.text}` takes {count} operands"
        )


def _ftz(value: Value) -> Value:
    return np.where(np.abs(value) < _F32_TINY, np.copysign(np.float32(0), value), value)


def _saturate(value: Value) -> Value:
    return np.where(np.isnan(value), value.dtype.type(0), np.clip(value, 0, 1)).astype(value.dtype)


def _mul_hi_64(a: Value, b: Value, signed: bool) -> Value:
    ua, ub = fit(a, np.dtype(np.uint64)), fit(b, np.dtype(np.uint64))
    a_lo, a_hi, b_lo, b_hi = ua & _M32, ua >> _S32, ub & _M32, ub >> _S32
    low = a_lo * b_lo
    middle = a_hi * b_lo + (low >> _S32)
    cross = (middle & _M32) + a_lo * b_hi
    high = a_hi * b_hi + (middle >> _S32) + (cross >> _S32)
    if signed:
        high = high - np.where(fit(a, np.dtype(np.int64)) < 0, ub, np.uint64(0))
        high = high - np.where(fit(b, np.dtype(np.int64)) < 0, ua, np.uint64(0))
    return high


def _integer_mul(mode: str, dtype: np.dtype[Any]) -> Callable[[Value, Value], Value]:
    bits = dtype.itemsize * 8
    if mode == "lo":
        return lambda a, b: a * b
    wide = np.dtype(f"{dtype.kind}{min(dtype.itemsize * 2, 8)}")
    if mode == "wide":
        if bits == 64:
            raise PtxUnsupportedError("mul.wide of 64-bit values")
        return lambda a, b: a.astype(wide) * b.astype(wide)
    if bits == 64:
        return lambda a, b: fit(_mul_hi_64(a, b, dtype.kind == "i"), dtype)
    shift = np.dtype(wide).type(bits)
    return lambda a, b: ((a.astype(wide) * b.astype(wide)) >> shift).astype(dtype)


def _divide(dtype: np.dtype[Any]) -> tuple[Callable[[Value, Value], Value], Callable[..., Value]]:
    ones = np.array(-1).astype(dtype)[()] if dtype.kind == "i" else np.iinfo(dtype).max

    def safe(b: Value) -> Value:
        return np.where(b == 0, dtype.type(1), b)

    def quotient(a: Value, b: Value) -> Value:
        divisor = safe(b)
        result = a // divisor if dtype.kind == "u" else (a - np.fmod(a, divisor)) // divisor
        return np.where(b == 0, ones, result).astype(dtype)

    def remainder(a: Value, b: Value) -> Value:
        divisor = safe(b)
        result = a % divisor if dtype.kind == "u" else np.fmod(a, divisor)
        return np.where(b == 0, a, result).astype(dtype)

    return quotient, remainder


def _shift(kind: str, dtype: np.dtype[Any]) -> Callable[[Value, Value], Value]:
    bits = dtype.itemsize * 8
    limit = dtype.type(bits - 1)

    def run(a: Value, amount: Value) -> Value:
        if np.ndim(amount) == 0:  # the usual case: one amount for every thread
            count = int(amount)
            if count < bits:
                return a << dtype.type(count) if kind == "shl" else a >> dtype.type(count)
            if kind == "shr" and dtype.kind == "i":
                return a >> limit
            return np.zeros_like(a)
        amount = np.asarray(amount).astype(np.uint64)
        clipped = np.minimum(amount, np.uint64(bits - 1)).astype(dtype)
        if kind == "shl":
            return np.where(amount >= bits, dtype.type(0), a << clipped).astype(dtype)
        if dtype.kind == "i":  # arithmetic: sign fill past the width
            return (a >> np.minimum(clipped, limit)).astype(dtype)
        return np.where(amount >= bits, dtype.type(0), a >> clipped).astype(dtype)

    return run


def _bfe(dtype: np.dtype[Any]) -> Callable[[Value, Value, Value], Value]:
    bits = dtype.itemsize * 8
    unsigned = np.dtype(f"u{dtype.itemsize}")

    def run(a: Value, position: Value, length: Value) -> Value:
        pos = np.minimum(np.asarray(position).astype(np.uint64) & np.uint64(0xFF), bits)
        size = np.minimum(np.asarray(length).astype(np.uint64) & np.uint64(0xFF), bits)
        raw = fit(a, unsigned).astype(np.uint64) if bits < 64 else fit(a, unsigned)
        shifted = np.where(pos >= bits, np.uint64(0), raw >> np.minimum(pos, np.uint64(63)))
        mask = np.where(
            size >= 64,
            ~np.uint64(0),
            (np.uint64(1) << np.minimum(size, np.uint64(63))) - np.uint64(1),
        )
        field = shifted & mask
        if dtype.kind == "i":
            top = np.minimum(pos + size, np.uint64(bits)) - np.uint64(1)
            sign_bit = np.where(
                size == 0, np.uint64(0), (raw >> np.minimum(top, np.uint64(63))) & np.uint64(1)
            )
            field = np.where((sign_bit == 1) & (size < 64), field | ~mask, field)
        return fit(fit(field, np.dtype(np.uint64)), dtype) if bits < 64 else fit(field, dtype)

    return run


def _bfi(dtype: np.dtype[Any]) -> Callable[[Value, Value, Value, Value], Value]:
    bits = dtype.itemsize * 8
    unsigned = np.dtype(f"u{dtype.itemsize}")

    def run(source: Value, base: Value, position: Value, length: Value) -> Value:
        pos = np.minimum(np.asarray(position).astype(np.uint64) & np.uint64(0xFF), bits)
        size = np.minimum(np.asarray(length).astype(np.uint64) & np.uint64(0xFF), bits)
        width_mask = np.where(
            size >= 64,
            ~np.uint64(0),
            (np.uint64(1) << np.minimum(size, np.uint64(63))) - np.uint64(1),
        )
        shift = np.minimum(pos, np.uint64(63))
        field_mask = np.where(pos >= bits, np.uint64(0), width_mask << shift)
        f = fit(source, unsigned).astype(np.uint64)
        b = fit(base, unsigned).astype(np.uint64)
        result = (b & ~field_mask) | ((f << shift) & field_mask)
        return fit(result.astype(unsigned), dtype)

    return run


def _popc(value: Value) -> Value:
    return np.bitwise_count(value).astype(np.uint32)


def _clz(dtype: np.dtype[Any]) -> Callable[[Value], Value]:
    bits = dtype.itemsize * 8

    def run(value: Value) -> Value:
        raw = fit(value, np.dtype(f"u{dtype.itemsize}")).astype(np.uint64)
        length = np.zeros(np.shape(raw), np.int64)
        remaining = raw
        for step in (32, 16, 8, 4, 2, 1):
            big = remaining >= (np.uint64(1) << np.uint64(step))
            length = length + np.where(big, step, 0)
            remaining = np.where(big, remaining >> np.uint64(step), remaining)
        length = length + (remaining > 0)
        return (bits - length).astype(np.uint32)

    return run


def _brev(dtype: np.dtype[Any]) -> Callable[[Value], Value]:
    bits = dtype.itemsize * 8

    def run(value: Value) -> Value:
        raw = fit(value, np.dtype(f"u{dtype.itemsize}")).astype(np.uint64)
        result = np.zeros(np.shape(raw), np.uint64)
        for bit in range(bits):
            result |= ((raw >> np.uint64(bit)) & np.uint64(1)) << np.uint64(bits - 1 - bit)
        return fit(result.astype(np.dtype(f"u{dtype.itemsize}")), dtype)

    return run


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
_BOOL_BINARY: dict[str, Callable[[Value, Value], Value]] = {
    "and": np.logical_and,
    "or": np.logical_or,
    "xor": np.logical_xor,
}


def _compute(  # noqa: PLR0917 - one branch per instruction form
    ops: Operands,
    instruction: Instruction,
    dtype: np.dtype[Any],
    function: Callable[..., Value],
    count: int,
    finish: Callable[[Value], Value] | None = None,
    source_dtype: np.dtype[Any] | None = None,
) -> Op:
    """d = function(sources...) on the active threads."""
    _arity(instruction, count + 1)
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


def translate_arithmetic(instruction: Instruction, ops: Operands) -> Op | None:
    """The op for an arithmetic/logic/compare/convert instruction, or None if not one."""
    parts = instruction.opcode.split(".")
    name = parts[0]
    if name in ("cvt", "setp", "selp", "mov", "cvta"):
        return _TRANSLATORS[name](instruction, ops, parts)
    if name not in _ARITHMETIC_NAMES:
        return None
    dtype = parse_type(instruction, parts[-1])
    modifiers = set(parts[1:-1])
    if dtype.kind == "b":
        if name in _BOOL_BINARY:
            return _compute(ops, instruction, dtype, _BOOL_BINARY[name], 2)
        if name == "not":
            return _compute(ops, instruction, dtype, np.logical_not, 1)
        raise _unsupported(instruction)
    if parts[-1] == "f16x2":
        raise _unsupported(instruction, "packed f16x2 arithmetic")
    if dtype.kind == "f":
        return _float_op(instruction, ops, name, modifiers, dtype)
    return _integer_op(instruction, ops, name, modifiers, dtype)


def _float_op(
    instruction: Instruction, ops: Operands, name: str, modifiers: set[str], dtype: np.dtype[Any]
) -> Op:
    known = {"rn", "rz", "rm", "rp", "ftz", "sat", "approx", "full", "NaN"}
    if modifiers - known:
        raise _unsupported(instruction, f"the modifiers .{', .'.join(sorted(modifiers - known))}")
    directed = next((m for m in ("rz", "rm", "rp") if m in modifiers), None)
    if directed is not None and (
        dtype != np.float32 or name not in ("add", "sub", "mul", "fma", "mad")
    ):
        raise _unsupported(instruction, f"directed rounding (.{directed}) of {name}")
    if "NaN" in modifiers:
        raise _unsupported(instruction, ".NaN")
    steps: list[Callable[[Value], Value]] = []
    if "ftz" in modifiers and dtype == np.float32:
        steps.append(_ftz)
    if "sat" in modifiers:
        steps.append(_saturate)

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
        return _compute(ops, instruction, dtype, _directed_f32(name, directed), count, finish)
    if name in _FLOAT_BINARY:
        return _compute(ops, instruction, dtype, _FLOAT_BINARY[name], 2, finish)
    if name in ("fma", "mad"):
        return _compute(ops, instruction, dtype, _fma(dtype), 3, finish)
    if name in _FLOAT_UNARY:
        function = _FLOAT_UNARY[name]
        if dtype == np.float16:
            base = function
            function = lambda x: base(x.astype(np.float32))  # noqa: E731
        return _compute(ops, instruction, dtype, function, 1, finish)
    if name == "copysign":
        return _compute(ops, instruction, dtype, lambda a, b: np.copysign(b, a), 2, finish)
    if name == "testp":
        raise _unsupported(instruction)
    raise _unsupported(instruction)


def _integer_op(  # noqa: PLR0911, PLR0912, PLR0915 - one branch per instruction form
    instruction: Instruction, ops: Operands, name: str, modifiers: set[str], dtype: np.dtype[Any]
) -> Op:
    mode = next((m for m in ("lo", "hi", "wide") if m in modifiers), None)
    extra = modifiers - {"lo", "hi", "wide", "sat", "cc"}
    if extra:
        raise _unsupported(instruction, f"the modifiers .{', .'.join(sorted(extra))}")
    if name in ("add", "sub") and "sat" in modifiers:
        if dtype != np.int32:
            raise _unsupported(instruction)
        wide = np.int64
        limit = (np.iinfo(np.int32).min, np.iinfo(np.int32).max)
        base = np.add if name == "add" else np.subtract
        return _compute(
            ops,
            instruction,
            dtype,
            lambda a, b: np.clip(base(a.astype(wide), b), *limit).astype(dtype),
            2,
        )
    if name in ("add", "sub", "addc", "subc"):
        return _carry_op(instruction, ops, name, "cc" in modifiers, dtype)
    if name in _INT_BINARY:
        return _compute(ops, instruction, dtype, _INT_BINARY[name], 2)
    if name == "mul":
        return _compute(
            ops,
            instruction,
            dtype,
            _integer_mul(mode or "lo", dtype),
            2,
            finish=None,
            source_dtype=dtype,
        )
    if name == "mad":
        multiply = _integer_mul(mode or "lo", dtype)
        if "sat" in modifiers:
            raise _unsupported(instruction)
        target = np.dtype(f"{dtype.kind}{dtype.itemsize * 2}") if mode == "wide" else dtype
        write = ops.writer(instruction, instruction.operands[0])
        _arity(instruction, 4)
        a, b = (ops.reader(instruction, t, dtype) for t in instruction.operands[1:3])
        c = ops.reader(instruction, instruction.operands[3], target)

        def mad(state: GroupState, mask: Mask) -> None:
            write(state, (multiply(a(state), b(state)) + c(state)).astype(target, copy=False), mask)

        return mad
    if name in ("div", "rem"):
        quotient, remainder = _divide(dtype)
        return _compute(ops, instruction, dtype, quotient if name == "div" else remainder, 2)
    if name in ("shl", "shr"):
        write = ops.writer(instruction, instruction.operands[0])
        _arity(instruction, 3)
        source = ops.reader(instruction, instruction.operands[1], dtype)
        amount = ops.reader(instruction, instruction.operands[2], np.dtype(np.uint32))
        shift = _shift(name, dtype)
        return lambda state, mask: write(state, shift(source(state), amount(state)), mask)
    if name == "neg":
        return _compute(ops, instruction, dtype, lambda a: (dtype.type(0) - a).astype(dtype), 1)
    if name == "abs":
        return _compute(ops, instruction, dtype, lambda a: np.abs(a).astype(dtype), 1)
    if name == "not":
        return _compute(ops, instruction, dtype, np.invert, 1)
    if name == "cnot":
        return _compute(ops, instruction, dtype, lambda a: (a == 0).astype(dtype), 1)
    if name == "popc":
        return _compute(ops, instruction, dtype, _popc, 1)
    if name == "clz":
        return _compute(ops, instruction, dtype, _clz(dtype), 1)
    if name == "brev":
        return _compute(ops, instruction, dtype, _brev(dtype), 1)
    if name == "bfe":
        write = ops.writer(instruction, instruction.operands[0])
        _arity(instruction, 4)
        a = ops.reader(instruction, instruction.operands[1], dtype)
        p, n = (ops.reader(instruction, t, np.dtype(np.uint32)) for t in instruction.operands[2:])
        extract = _bfe(dtype)
        return lambda state, mask: write(state, extract(a(state), p(state), n(state)), mask)
    if name == "bfi":
        write = ops.writer(instruction, instruction.operands[0])
        _arity(instruction, 5)
        f, b = (ops.reader(instruction, t, dtype) for t in instruction.operands[1:3])
        p, n = (ops.reader(instruction, t, np.dtype(np.uint32)) for t in instruction.operands[3:])
        insert = _bfi(dtype)
        return lambda state, mask: write(
            state, insert(f(state), b(state), p(state), n(state)), mask
        )
    if name == "prmt":
        return _prmt(instruction, ops, modifiers)
    raise _unsupported(instruction)


def _carry_op(
    instruction: Instruction, ops: Operands, name: str, sets_carry: bool, dtype: np.dtype[Any]
) -> Op:
    _arity(instruction, 3)
    write = ops.writer(instruction, instruction.operands[0])
    unsigned = np.dtype(f"u{dtype.itemsize}")
    a = ops.reader(instruction, instruction.operands[1], unsigned)
    b = ops.reader(instruction, instruction.operands[2], unsigned)
    uses_carry = name in ("addc", "subc")
    adding = name in ("add", "addc")
    if not uses_carry and not sets_carry:
        function = np.add if adding else np.subtract
        return _compute(ops, instruction, dtype, function, 2)

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
        raise _unsupported(instruction, "prmt modes")
    _arity(instruction, 4)
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
        raise _unsupported(instruction)
    function = np.not_equal if dtype.kind != "f" and compare == "ne" else _COMPARE[compare]
    combiner = _BOOL_BINARY.get(parts[2]) if len(parts) > 3 and parts[2] != "ftz" else None
    targets = instruction.operands[0].split("|")
    write_p = ops.writer(instruction, targets[0])
    write_q = ops.writer(instruction, targets[1]) if len(targets) > 1 else None
    _arity(instruction, 4 if combiner else 3)
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
    _arity(instruction, 4)
    write = ops.writer(instruction, instruction.operands[0])
    a, b = (ops.reader(instruction, t, dtype) for t in instruction.operands[1:3])
    c = ops.reader(instruction, instruction.operands[3], np.dtype(np.bool_))
    return lambda state, mask: write(state, np.where(c(state), a(state), b(state)), mask)


def _mov(instruction: Instruction, ops: Operands, parts: list[str]) -> Op:
    dtype = parse_type(instruction, parts[-1])
    _arity(instruction, 2)
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
    return _compute(ops, instruction, dtype, lambda x: x, 1)


def _cvta(instruction: Instruction, ops: Operands, parts: list[str]) -> Op:
    dtype = parse_type(instruction, parts[-1])
    to_space = parts[1] == "to"
    space = parts[2] if to_space else parts[1]
    window = {"global": 0, "shared": SHARED_WINDOW, "local": LOCAL_WINDOW}.get(space)
    if window is None:
        raise _unsupported(instruction)
    delta = np.uint64(window)
    if to_space:
        return _compute(
            ops,
            instruction,
            np.dtype(np.uint64),
            lambda x: (x - delta) if window else x,
            1,
            lambda v: fit(v, dtype),
        )
    return _compute(ops, instruction, np.dtype(np.uint64), lambda x: x + delta, 1)


def _cvt(instruction: Instruction, ops: Operands, parts: list[str]) -> Op:
    target_type, source_type = parts[-2], parts[-1]
    target = parse_type(instruction, target_type)
    source = parse_type(instruction, source_type)
    modifiers = set(parts[1:-2])
    extra = modifiers - {"rn", "rz", "rm", "rp", "rni", "rzi", "rmi", "rpi", "ftz", "sat"}
    if extra:
        raise _unsupported(instruction)
    steps: list[Callable[[Value], Value]] = []
    int_rounding = next((_INT_ROUNDING[m] for m in modifiers if m in _INT_ROUNDING), None)
    if modifiers & {"rz", "rm", "rp"}:
        exact = target.kind != "f" or (source.kind == "f" and source.itemsize <= target.itemsize)
        if not exact:
            raise _unsupported(instruction, "directed rounding")
    if target.kind == "f":
        if int_rounding is not None:
            steps.append(int_rounding)
        steps.append(lambda v: v.astype(target))
        if "ftz" in modifiers and target == np.float32:
            steps.append(_ftz)
        if "sat" in modifiers:
            steps.append(_saturate)
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

    return _compute(ops, instruction, target, convert, 1, source_dtype=source)


_TRANSLATORS: dict[str, Callable[[Instruction, Operands, list[str]], Op]] = {
    "cvt": _cvt, "setp": _setp, "selp": _selp, "mov": _mov, "cvta": _cvta,
}  # fmt: skip
_ARITHMETIC_NAMES = {
    "add", "sub", "mul", "mad", "fma", "div", "rem", "min", "max", "neg", "abs", "and", "or",
    "xor", "not", "cnot", "shl", "shr", "popc", "clz", "brev", "bfe", "bfi", "prmt", "sqrt",
    "rsqrt", "rcp", "ex2", "lg2", "sin", "cos", "tanh", "copysign", "testp", "addc", "subc",
}  # fmt: skip
