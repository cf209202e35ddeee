"""JSON <-> typed wasm values (values.proto's Value), by the export's signature.

Hand-written, next to the generated code, so that the gateway's HTTP face and the Python
client/CLI share one set of rules without the thin client depending on the services'
runtime or a service on the client package. Floats travel as raw bits.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

from tensorwasm.common.v1 import values_pb2

TYPE_NAMES: dict[values_pb2.ValueType.ValueType, str] = {
    values_pb2.VALUE_TYPE_I32: "i32",
    values_pb2.VALUE_TYPE_I64: "i64",
    values_pb2.VALUE_TYPE_F32: "f32",
    values_pb2.VALUE_TYPE_F64: "f64",
    values_pb2.VALUE_TYPE_V128: "v128",
    values_pb2.VALUE_TYPE_FUNCREF: "funcref",
    values_pb2.VALUE_TYPE_EXTERNREF: "externref",
}
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "infinity": math.inf, "-inf": -math.inf}


class ArgumentError(ValueError):
    """A JSON argument does not fit the export's signature."""


def to_wire(
    args: Sequence[Any], params: Sequence[values_pb2.ValueType.ValueType]
) -> list[values_pb2.Value]:
    """Converts JSON arguments to typed values.

    Integers for i32/i64 (i32 also accepts unsigned values up to 2^32-1). Numbers,
    "nan"/"inf"/"-inf", or exact bit patterns as {"bits": "0x7fa00000"} for f32/f64.
    Hex strings of 16 bytes for v128.
    """
    if len(args) != len(params):
        raise ArgumentError(f"expected {len(params)} arguments, got {len(args)}")
    return [
        _one(arg, TYPE_NAMES.get(t, "unknown"), i)
        for i, (arg, t) in enumerate(zip(args, params, strict=True))
    ]


def _one(arg: Any, kind: str, position: int) -> values_pb2.Value:
    where = f"argument {position} ({kind})"
    if kind in ("i32", "i64"):
        if isinstance(arg, bool) or not isinstance(arg, int):
            raise ArgumentError(f"{where}: expected an integer, got {arg!r}")
        bits = 32 if kind == "i32" else 64
        if not -(1 << (bits - 1)) <= arg < (1 << bits):
            raise ArgumentError(f"{where}: {arg} is out of range")
        if arg >= 1 << (bits - 1):
            arg -= 1 << bits
        return values_pb2.Value(i32=arg) if kind == "i32" else values_pb2.Value(i64=arg)
    if kind in ("f32", "f64"):
        if isinstance(arg, dict) and "bits" in arg:
            return _float_bits(kind, _parse_bits(arg["bits"], 32 if kind == "f32" else 64, where))
        if isinstance(arg, str) and arg.lower() in _NON_FINITE:
            arg = _NON_FINITE[arg.lower()]
        if isinstance(arg, bool) or not isinstance(arg, int | float):
            raise ArgumentError(f"{where}: expected a number, got {arg!r}")
        fmt = ("<f", "<I") if kind == "f32" else ("<d", "<Q")
        try:
            packed = struct.pack(fmt[0], float(arg))
        except OverflowError:
            raise ArgumentError(f"{where}: {arg} does not fit in {kind}") from None
        return _float_bits(kind, struct.unpack(fmt[1], packed)[0])
    if kind == "v128":
        try:
            data = bytes.fromhex(arg.removeprefix("0x")) if isinstance(arg, str) else b""
        except ValueError:
            data = b""
        if len(data) != 16:
            raise ArgumentError(f"{where}: expected 32 hex digits")
        return values_pb2.Value(v128=data)
    raise ArgumentError(f"{where}: this value type cannot be passed over the API")


def _parse_bits(raw: object, width: int, where: str) -> int:
    try:
        bits = int(str(raw), 0)
    except ValueError:
        raise ArgumentError(f"{where}: bits must be an integer such as 0x7fa00000") from None
    if not 0 <= bits < 1 << width:
        raise ArgumentError(f"{where}: bits {raw} do not fit in {width} bits")
    return bits


def _float_bits(kind: str, bits: int) -> values_pb2.Value:
    return values_pb2.Value(f32_bits=bits) if kind == "f32" else values_pb2.Value(f64_bits=bits)


# The canonical quiet NaNs (positive sign, payload 0): "nan" in JSON; any other NaN prints
# as its exact bits ({"bits": "0x7fa00000"}), which `to_wire` takes back unchanged.
_CANONICAL_NAN = {"f32_bits": 0x7FC00000, "f64_bits": 0x7FF8000000000000}


def to_json(values: Sequence[values_pb2.Value]) -> list[Any]:
    """Typed values as JSON: integers, floats (non-finite as "nan"/"inf"/"-inf", a NaN
    other than the canonical one as its exact bits), hex v128."""
    out: list[Any] = []
    for value in values:
        kind = value.WhichOneof("kind")
        if kind == "f32_bits":
            number = struct.unpack("<f", struct.pack("<I", value.f32_bits))[0]
            out.append(_float_json(number, kind, value.f32_bits, 8))
        elif kind == "f64_bits":
            number = struct.unpack("<d", struct.pack("<Q", value.f64_bits))[0]
            out.append(_float_json(number, kind, value.f64_bits, 16))
        elif kind == "v128":
            out.append(value.v128.hex())
        elif kind is not None:
            out.append(getattr(value, kind))
    return out


def _float_json(number: float, kind: str, bits: int, digits: int) -> float | str | dict[str, str]:
    if math.isnan(number):
        return "nan" if bits == _CANONICAL_NAN[kind] else {"bits": f"0x{bits:0{digits}x}"}
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    return number
