"""Unit tests for tensorwasm_executor.wasm.values: ranges, shapes and bit-exact payloads."""

from __future__ import annotations

import math

import pytest
from tensorwasm_common.errors import Code
from tensorwasm_executor.errors import InvalidValueError, UnsupportedValueTypeError
from tensorwasm_executor.wasm.values import ValueType, WasmValue


def test_value_type_strings_match_wasm_names() -> None:
    assert [t.value for t in ValueType] == [
        "i32",
        "i64",
        "f32",
        "f64",
        "v128",
        "funcref",
        "externref",
    ]
    assert ValueType.FUNCREF.is_reference and ValueType.EXTERNREF.is_reference
    assert not ValueType.V128.is_reference


@pytest.mark.parametrize("value", [-(1 << 31), -1, 0, (1 << 31) - 1])
def test_i32_accepts_signed_range(value: int) -> None:
    assert WasmValue.i32(value).payload == value


@pytest.mark.parametrize("value", [1 << 31, -(1 << 31) - 1, 0xFFFFFFFF])
def test_i32_rejects_out_of_range(value: int) -> None:
    with pytest.raises(InvalidValueError) as caught:
        WasmValue.i32(value)
    assert caught.value.code is Code.INVALID_ARGUMENT
    assert caught.value.reason == "INVALID_VALUE"
    assert caught.value.metadata == {"type": "i32"}


def test_i64_range() -> None:
    assert WasmValue.i64(-(1 << 63)).payload == -(1 << 63)
    assert WasmValue.i64((1 << 63) - 1).payload == (1 << 63) - 1
    with pytest.raises(InvalidValueError):
        WasmValue.i64(1 << 63)


def test_float_bits_are_unsigned() -> None:
    assert WasmValue.f32_bits(0xFFFFFFFF).payload == 0xFFFFFFFF
    assert WasmValue.f64_bits((1 << 64) - 1).payload == (1 << 64) - 1
    for bad in (-1, 1 << 32):
        with pytest.raises(InvalidValueError):
            WasmValue.f32_bits(bad)
    with pytest.raises(InvalidValueError):
        WasmValue.f64_bits(1 << 64)


def test_bools_and_bytes_are_not_numbers() -> None:
    with pytest.raises(InvalidValueError):
        WasmValue.i32(True)
    with pytest.raises(InvalidValueError):
        WasmValue(ValueType.I64, b"\x00" * 8)


def test_v128_needs_exactly_16_bytes() -> None:
    assert WasmValue.v128(bytearray(range(16))).payload == bytes(range(16))
    for bad in (b"", b"\x00" * 15, b"\x00" * 17):
        with pytest.raises(InvalidValueError):
            WasmValue.v128(bad)
    with pytest.raises(InvalidValueError):
        WasmValue(ValueType.V128, 0)


@pytest.mark.parametrize("kind", [ValueType.FUNCREF, ValueType.EXTERNREF])
def test_reference_values_are_unsupported(kind: ValueType) -> None:
    with pytest.raises(UnsupportedValueTypeError) as caught:
        WasmValue(kind, 0)
    assert caught.value.reason == "UNSUPPORTED_VALUE_TYPE"


def test_float_conversions() -> None:
    assert WasmValue.f32(-0.0).payload == 0x80000000
    assert WasmValue.f32(1.5).payload == 0x3FC00000
    assert WasmValue.f64(-0.0).payload == 0x8000000000000000
    assert WasmValue.f64_bits(0x400C000000000000).as_float() == 3.5
    assert WasmValue.f32_bits(0x40700000).as_float() == 3.75
    assert math.isnan(WasmValue.f32_bits(0x7FC00001).as_float())
    with pytest.raises(InvalidValueError):
        WasmValue.i32(1).as_float()


def test_values_are_frozen_and_comparable() -> None:
    value = WasmValue.i32(7)
    assert value == WasmValue(ValueType.I32, 7)
    with pytest.raises(AttributeError):
        value.payload = 8  # type: ignore[misc]
