"""Unit tests for tensorwasm.common.v1.values_json: JSON arguments <-> typed wire values."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from tensorwasm.common.v1 import values_pb2
from tensorwasm.common.v1.values_json import TYPE_NAMES, ArgumentError, to_json, to_wire

I32 = values_pb2.VALUE_TYPE_I32
I64 = values_pb2.VALUE_TYPE_I64
F32 = values_pb2.VALUE_TYPE_F32
F64 = values_pb2.VALUE_TYPE_F64
V128 = values_pb2.VALUE_TYPE_V128
FUNCREF = values_pb2.VALUE_TYPE_FUNCREF
EXTERNREF = values_pb2.VALUE_TYPE_EXTERNREF


def _one(arg: Any, kind: int) -> values_pb2.Value:
    (value,) = to_wire([arg], [kind])
    return value


def test_type_names() -> None:
    assert TYPE_NAMES == {
        I32: "i32",
        I64: "i64",
        F32: "f32",
        F64: "f64",
        V128: "v128",
        FUNCREF: "funcref",
        EXTERNREF: "externref",
    }


# --- integers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arg", "wire"),
    [
        (0, 0),
        (1, 1),
        (-1, -1),
        (2**31 - 1, 2**31 - 1),
        (-(2**31), -(2**31)),
        (2**31, -(2**31)),  # unsigned spellings wrap to the same bits
        (0xFFFFFFFF, -1),
        (0x80000001, -(2**31) + 1),
    ],
)
def test_i32(arg: int, wire: int) -> None:
    value = _one(arg, I32)
    assert value.WhichOneof("kind") == "i32"
    assert value.i32 == wire


@pytest.mark.parametrize(
    ("arg", "wire"),
    [
        (2**63 - 1, 2**63 - 1),
        (-(2**63), -(2**63)),
        (2**64 - 1, -1),
        (2**63, -(2**63)),
        (0, 0),
    ],
)
def test_i64(arg: int, wire: int) -> None:
    value = _one(arg, I64)
    assert value.WhichOneof("kind") == "i64"
    assert value.i64 == wire


@pytest.mark.parametrize(
    ("arg", "kind"),
    [(2**32, I32), (-(2**31) - 1, I32), (2**64, I64), (-(2**63) - 1, I64)],
)
def test_integer_out_of_range(arg: int, kind: int) -> None:
    with pytest.raises(ArgumentError) as caught:
        _one(arg, kind)
    name = TYPE_NAMES[kind]
    assert str(caught.value) == f"argument 0 ({name}): {arg} is out of range"


@pytest.mark.parametrize("arg", [True, False, 1.0, 1.5, "1", None, [1], {"bits": "0x1"}])
@pytest.mark.parametrize("kind", [I32, I64])
def test_integers_reject_non_integers(arg: Any, kind: int) -> None:
    with pytest.raises(ArgumentError) as caught:
        _one(arg, kind)
    assert str(caught.value) == (
        f"argument 0 ({TYPE_NAMES[kind]}): expected an integer, got {arg!r}"
    )


# --- floats ----------------------------------------------------------------------------------


def _f32_bits(x: float) -> int:
    return int(struct.unpack("<I", struct.pack("<f", x))[0])


def _f64_bits(x: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", x))[0])


@pytest.mark.parametrize(
    ("arg", "bits"),
    [
        (1.0, 0x3F800000),
        (1, 0x3F800000),
        (-2.5, 0xC0200000),
        (0.0, 0x00000000),
        (-0.0, 0x80000000),
        (0.1, 0x3DCCCCCD),  # rounded to nearest binary32
        (3.4028234663852886e38, 0x7F7FFFFF),
        ("inf", 0x7F800000),
        ("Infinity", 0x7F800000),
        ("-inf", 0xFF800000),
        ("nan", 0x7FC00000),
        ("NaN", 0x7FC00000),
        (math.inf, 0x7F800000),
    ],
)
def test_f32_from_numbers(arg: Any, bits: int) -> None:
    value = _one(arg, F32)
    assert value.WhichOneof("kind") == "f32_bits"
    assert value.f32_bits == bits


@pytest.mark.parametrize(
    ("arg", "bits"),
    [
        (1.0, 0x3FF0000000000000),
        (-0.0, 0x8000000000000000),
        (0.1, 0x3FB999999999999A),
        (2, 0x4000000000000000),
        ("inf", 0x7FF0000000000000),
        ("-inf", 0xFFF0000000000000),
        ("nan", 0x7FF8000000000000),
        (5e-324, 0x0000000000000001),
    ],
)
def test_f64_from_numbers(arg: Any, bits: int) -> None:
    value = _one(arg, F64)
    assert value.WhichOneof("kind") == "f64_bits"
    assert value.f64_bits == bits


@pytest.mark.parametrize(
    ("bits", "kind", "expected"),
    [
        ("0x7fa00000", F32, 0x7FA00000),  # a signalling NaN with a payload
        ("0xffc00001", F32, 0xFFC00001),
        ("0x80000000", F32, 0x80000000),
        ("2143289344", F32, 0x7FC00000),
        (0x7F800001, F32, 0x7F800001),
        ("0x7ff4000000000001", F64, 0x7FF4000000000001),
        ("0x8000000000000000", F64, 0x8000000000000000),
        ("0xfff8000000000000", F64, 0xFFF8000000000000),
    ],
)
def test_exact_bit_patterns(bits: Any, kind: int, expected: int) -> None:
    value = _one({"bits": bits}, kind)
    field = "f32_bits" if kind == F32 else "f64_bits"
    assert value.WhichOneof("kind") == field
    assert getattr(value, field) == expected


def test_signalling_nan_bits_survive_a_round_trip_through_the_wire() -> None:
    value = _one({"bits": "0x7fa00000"}, F32)
    parsed = values_pb2.Value.FromString(value.SerializeToString())
    assert parsed.f32_bits == 0x7FA00000
    assert to_json([parsed]) == [{"bits": "0x7fa00000"}]  # its exact bits, not "nan"
    assert _one(to_json([parsed])[0], F32).f32_bits == 0x7FA00000  # and back unchanged


def test_f32_overflow_is_an_argument_error() -> None:
    with pytest.raises(ArgumentError) as caught:
        _one(1e39, F32)
    assert str(caught.value) == "argument 0 (f32): 1e+39 does not fit in f32"


@pytest.mark.parametrize("arg", [True, None, "1.5", "infinite", [1.0], {"value": 1.0}])
@pytest.mark.parametrize("kind", [F32, F64])
def test_floats_reject_non_numbers(arg: Any, kind: int) -> None:
    with pytest.raises(ArgumentError) as caught:
        _one(arg, kind)
    assert str(caught.value) == f"argument 0 ({TYPE_NAMES[kind]}): expected a number, got {arg!r}"


@pytest.mark.parametrize(
    ("arg", "kind"),
    [
        ({"bits": "zz"}, F32),
        ({"bits": "0x100000000"}, F32),
        ({"bits": "-1"}, F64),
        ({"bits": "0x10000000000000000"}, F64),
        ("zz" * 16, V128),
    ],
)
def test_malformed_payloads_raise_argument_error(arg: Any, kind: int) -> None:
    with pytest.raises(ArgumentError, match=r"^argument 0 \("):
        _one(arg, kind)


# --- v128 and references --------------------------------------------------------------------


def test_v128_from_hex() -> None:
    hex_digits = "000102030405060708090a0b0c0d0eff"
    assert _one(hex_digits, V128).v128 == bytes.fromhex(hex_digits)
    assert _one("0x" + hex_digits, V128).v128 == bytes.fromhex(hex_digits)
    assert _one(hex_digits.upper(), V128).v128 == bytes.fromhex(hex_digits)


@pytest.mark.parametrize("arg", ["00" * 15, "00" * 17, "", 0, None, b"\x00" * 16])
def test_v128_wrong_size_or_type(arg: Any) -> None:
    with pytest.raises(ArgumentError) as caught:
        _one(arg, V128)
    assert str(caught.value) == "argument 0 (v128): expected 32 hex digits"


@pytest.mark.parametrize(
    ("kind", "name"),
    [
        (FUNCREF, "funcref"),
        (EXTERNREF, "externref"),
        (values_pb2.VALUE_TYPE_UNSPECIFIED, "unknown"),
    ],
)
def test_reference_types_cannot_be_passed(kind: int, name: str) -> None:
    with pytest.raises(ArgumentError) as caught:
        _one(None, kind)
    assert (
        str(caught.value) == f"argument 0 ({name}): this value type cannot be passed over the API"
    )


# --- whole argument lists ---------------------------------------------------------------------


def test_several_arguments_in_order() -> None:
    values = to_wire([1, 2.0, "-inf", 3], [I32, F64, F32, I64])
    assert [v.WhichOneof("kind") for v in values] == ["i32", "f64_bits", "f32_bits", "i64"]
    assert values[0].i32 == 1
    assert values[1].f64_bits == 0x4000000000000000
    assert values[2].f32_bits == 0xFF800000
    assert values[3].i64 == 3


def test_error_names_the_argument_position() -> None:
    with pytest.raises(ArgumentError) as caught:
        to_wire([1, 2, "x"], [I32, I32, I32])
    assert str(caught.value) == "argument 2 (i32): expected an integer, got 'x'"


@pytest.mark.parametrize(("args", "params"), [([], [I32]), ([1, 2], [I32]), ([1], [])])
def test_wrong_argument_count(args: list[Any], params: list[int]) -> None:
    with pytest.raises(ArgumentError) as caught:
        to_wire(args, params)
    assert str(caught.value) == f"expected {len(params)} arguments, got {len(args)}"


def test_no_arguments() -> None:
    assert to_wire([], []) == []


def test_argument_error_is_a_value_error() -> None:
    assert issubclass(ArgumentError, ValueError)


# --- to_json ----------------------------------------------------------------------------------


def test_to_json_integers_and_v128() -> None:
    values = [
        values_pb2.Value(i32=-1),
        values_pb2.Value(i32=0),
        values_pb2.Value(i64=-(2**63)),
        values_pb2.Value(v128=bytes(range(16))),
    ]
    assert to_json(values) == [-1, 0, -(2**63), "000102030405060708090a0b0c0d0e0f"]


def test_to_json_floats() -> None:
    values = [
        values_pb2.Value(f32_bits=0x3F800000),
        values_pb2.Value(f32_bits=0x3DCCCCCD),
        values_pb2.Value(f64_bits=_f64_bits(0.1)),
        values_pb2.Value(f32_bits=0x7F800000),
        values_pb2.Value(f32_bits=0xFF800000),
        values_pb2.Value(f64_bits=0x7FF0000000000000),
        values_pb2.Value(f64_bits=0xFFF0000000000000),
        values_pb2.Value(f32_bits=0x7FC00000),
        values_pb2.Value(f64_bits=0xFFF8000000000001),
    ]
    assert to_json(values) == [
        1.0,
        struct.unpack("<f", struct.pack("<I", 0x3DCCCCCD))[0],
        0.1,
        "inf",
        "-inf",
        "inf",
        "-inf",
        "nan",
        {"bits": "0xfff8000000000001"},  # not the canonical NaN: exact bits
    ]


def test_to_json_negative_zero_keeps_its_sign() -> None:
    (f32,) = to_json([values_pb2.Value(f32_bits=0x80000000)])
    (f64,) = to_json([values_pb2.Value(f64_bits=0x8000000000000000)])
    assert f32 == 0.0 and math.copysign(1.0, f32) == -1.0
    assert f64 == 0.0 and math.copysign(1.0, f64) == -1.0


def test_to_json_skips_unset_values() -> None:
    assert to_json([values_pb2.Value(), values_pb2.Value(i32=5)]) == [5]


@pytest.mark.parametrize(
    ("arg", "kind"),
    [
        (-5, I32),
        (2**40, I64),
        (1.5, F32),
        (-0.0, F32),
        (0.1, F64),
        ("inf", F64),
        ("-inf", F32),
        ("nan", F64),
        ("ff" * 16, V128),
    ],
)
def test_round_trip(arg: Any, kind: int) -> None:
    (back,) = to_json(to_wire([arg], [kind]))
    if isinstance(arg, float):
        assert back == arg
        assert math.copysign(1.0, back) == math.copysign(1.0, arg)
    else:
        assert back == arg


def test_f32_round_trip_reports_the_binary32_value() -> None:
    (back,) = to_json(to_wire([0.1], [F32]))
    assert back == 0.10000000149011612
    assert _f32_bits(back) == 0x3DCCCCCD
