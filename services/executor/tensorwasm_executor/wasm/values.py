"""WebAssembly value types and bit-exact values, as the executor's domain layer sees them."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from tensorwasm_executor.errors import InvalidValueError, UnsupportedValueTypeError

__all__ = ["ValueType", "WasmValue", "from_guest"]

_I32_MIN, _I32_END = -(1 << 31), 1 << 31
_I64_MIN, _I64_END = -(1 << 63), 1 << 63


class ValueType(enum.Enum):
    """A core WebAssembly value type."""

    I32 = "i32"
    I64 = "i64"
    F32 = "f32"
    F64 = "f64"
    V128 = "v128"
    FUNCREF = "funcref"
    EXTERNREF = "externref"

    @property
    def is_reference(self) -> bool:
        """Whether this is a reference type (not passable across the executor boundary)."""
        return self in (ValueType.FUNCREF, ValueType.EXTERNREF)


# Accepted integer range [low, end) of the payload, per numeric type.
_RANGES: dict[ValueType, tuple[int, int]] = {
    ValueType.I32: (_I32_MIN, _I32_END),
    ValueType.I64: (_I64_MIN, _I64_END),
    ValueType.F32: (0, 1 << 32),
    ValueType.F64: (0, 1 << 64),
}


@dataclass(frozen=True, slots=True)
class WasmValue:
    """A typed WebAssembly value whose payload is kept bit-exact.

    Payloads: i32/i64 are signed Python ints; f32/f64 are the raw IEEE-754 bits as
    unsigned ints (so NaN payloads and -0.0 survive); v128 is 16 bytes in memory order
    (what `v128.store` would write). Reference types cannot be represented.
    """

    type: ValueType
    payload: int | bytes

    def __post_init__(self) -> None:
        kind = self.type
        if kind.is_reference:
            raise UnsupportedValueTypeError(
                f"{kind.value} values cannot cross the executor boundary",
                metadata={"type": kind.value},
            )
        if kind is ValueType.V128:
            if not isinstance(self.payload, bytes) or len(self.payload) != 16:
                raise InvalidValueError(
                    "a v128 payload must be exactly 16 bytes", metadata={"type": kind.value}
                )
            return
        low, end = _RANGES[kind]
        payload = self.payload
        if isinstance(payload, bool) or not isinstance(payload, int) or not low <= payload < end:
            raise InvalidValueError(
                f"{kind.value} payload must be an int in [{low}, {end})",
                metadata={"type": kind.value},
            )

    @classmethod
    def i32(cls, value: int) -> WasmValue:
        """Builds an i32 from a signed int in [-2**31, 2**31)."""
        return cls(ValueType.I32, value)

    @classmethod
    def i64(cls, value: int) -> WasmValue:
        """Builds an i64 from a signed int in [-2**63, 2**63)."""
        return cls(ValueType.I64, value)

    @classmethod
    def f32_bits(cls, bits: int) -> WasmValue:
        """Builds an f32 from its raw IEEE-754 bits, an unsigned int in [0, 2**32)."""
        return cls(ValueType.F32, bits)

    @classmethod
    def f64_bits(cls, bits: int) -> WasmValue:
        """Builds an f64 from its raw IEEE-754 bits, an unsigned int in [0, 2**64)."""
        return cls(ValueType.F64, bits)

    @classmethod
    def f32(cls, value: float) -> WasmValue:
        """Builds an f32 from a Python float (rounded; NaN payloads are not preserved)."""
        return cls(ValueType.F32, struct.unpack("<I", struct.pack("<f", value))[0])

    @classmethod
    def f64(cls, value: float) -> WasmValue:
        """Builds an f64 from a Python float (use `f64_bits` where NaN payloads matter)."""
        return cls(ValueType.F64, struct.unpack("<Q", struct.pack("<d", value))[0])

    @classmethod
    def v128(cls, data: bytes | bytearray | memoryview) -> WasmValue:
        """Builds a v128 from 16 bytes in memory (little-endian lane) order."""
        return cls(ValueType.V128, bytes(data))

    def as_float(self) -> float:
        """Returns an f32/f64 value as a Python float (lossy for signalling NaNs).

        Raises:
            InvalidValueError: the value is not an f32 or f64.
        """
        if self.type is ValueType.F32:
            return float(struct.unpack("<f", struct.pack("<I", self.payload))[0])
        if self.type is ValueType.F64:
            return float(struct.unpack("<d", struct.pack("<Q", self.payload))[0])
        raise InvalidValueError(
            f"{self.type.value} is not a float type", metadata={"type": self.type.value}
        )


# The slots' own setters: what the frozen dataclass's __init__ calls, minus the checks.
_SET_TYPE = WasmValue.__dict__["type"].__set__
_SET_PAYLOAD = WasmValue.__dict__["payload"].__set__


def from_guest(kind: ValueType, payload: int | bytes) -> WasmValue:
    """A value a wasm call produced, built without the range checks of `WasmValue`.

    Only for payloads read out of a `wasmtime_val_raw_t` with `kind`'s own layout (an
    i32 as a signed 32-bit int, an f64 as 64 unsigned bits, a v128 as 16 bytes), which
    are in range by construction; it is on every call's hot path.
    """
    value = object.__new__(WasmValue)
    _SET_TYPE(value, kind)
    _SET_PAYLOAD(value, payload)
    return value
