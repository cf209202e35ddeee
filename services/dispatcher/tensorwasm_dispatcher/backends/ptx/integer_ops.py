"""Integer helpers of the translators: high and wide products, division with PTX's
answers for zero divisors, shifts past the width, bit fields and bit counts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tensorwasm_dispatcher.backends.ptx.operands import fit
from tensorwasm_dispatcher.backends.ptx.parser import PtxUnsupportedError
from tensorwasm_dispatcher.backends.ptx.state import Value

_M32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)


def mul_hi_64(a: Value, b: Value, signed: bool) -> Value:
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


def integer_mul(mode: str, dtype: np.dtype[Any]) -> Callable[[Value, Value], Value]:
    bits = dtype.itemsize * 8
    if mode == "lo":
        return lambda a, b: a * b
    wide = np.dtype(f"{dtype.kind}{min(dtype.itemsize * 2, 8)}")
    if mode == "wide":
        if bits == 64:
            raise PtxUnsupportedError("mul.wide of 64-bit values")
        return lambda a, b: a.astype(wide) * b.astype(wide)
    if bits == 64:
        return lambda a, b: fit(mul_hi_64(a, b, dtype.kind == "i"), dtype)
    shift = np.dtype(wide).type(bits)
    return lambda a, b: ((a.astype(wide) * b.astype(wide)) >> shift).astype(dtype)


def divide(dtype: np.dtype[Any]) -> tuple[Callable[[Value, Value], Value], Callable[..., Value]]:
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


def shift(kind: str, dtype: np.dtype[Any]) -> Callable[[Value, Value], Value]:
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


def bfe(dtype: np.dtype[Any]) -> Callable[[Value, Value, Value], Value]:
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


def bfi(dtype: np.dtype[Any]) -> Callable[[Value, Value, Value, Value], Value]:
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


def popc(value: Value) -> Value:
    return np.bitwise_count(value).astype(np.uint32)


def clz(dtype: np.dtype[Any]) -> Callable[[Value], Value]:
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


def brev(dtype: np.dtype[Any]) -> Callable[[Value], Value]:
    bits = dtype.itemsize * 8

    def run(value: Value) -> Value:
        raw = fit(value, np.dtype(f"u{dtype.itemsize}")).astype(np.uint64)
        result = np.zeros(np.shape(raw), np.uint64)
        for bit in range(bits):
            result |= ((raw >> np.uint64(bit)) & np.uint64(1)) << np.uint64(bits - 1 - bit)
        return fit(result.astype(np.dtype(f"u{dtype.itemsize}")), dtype)

    return run
