"""Deploy and invoke through the gateway: typed values travel bit-exactly, both ways."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from tensorwasm.common.v1 import values_pb2
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm_client.client import GatewayClient

pytestmark = pytest.mark.integration

I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1


def f32_bits(number: float) -> int:
    return struct.unpack("<I", struct.pack("<f", number))[0]


def f64_bits(number: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", number))[0]


def f32_value(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits))[0]


def results(client: GatewayClient, function: str, export: str, *args: Value) -> list[Value]:
    response = client.invoke(function, export, list(args))
    outcome = response.outcome
    assert outcome.WhichOneof("result") == "success", outcome.failure
    assert response.export_name == export
    return list(outcome.success.results)


@pytest.fixture
def numeric(client: GatewayClient, wasm: Callable[[str], bytes]) -> str:
    client.create_function("numeric", wasm("numeric"))
    return "numeric"


def test_deploy_and_invoke_add(client: GatewayClient, wasm: Callable[[str], bytes]) -> None:
    module = wasm("add")
    function = client.create_function("add", module)
    assert function.name == "functions/add"
    assert function.module_size_bytes == len(module)
    assert len(function.module_digest) == 64
    assert [
        (e.name, list(e.signature.params), list(e.signature.results)) for e in function.exports
    ] == [("add", [values_pb2.VALUE_TYPE_I32] * 2, [values_pb2.VALUE_TYPE_I32])]

    response = client.invoke("add", "add", [Value(i32=1), Value(i32=2)])

    assert list(response.outcome.success.results) == [Value(i32=3)]
    assert response.outcome.success.results[0].WhichOneof("kind") == "i32"
    assert response.outcome.stdout == b"" and response.outcome.stderr == b""
    # The only export is chosen when none is named.
    chosen = client.invoke("add", "", [Value(i32=-5), Value(i32=2)])
    assert chosen.export_name == "add"
    assert list(chosen.outcome.success.results) == [Value(i32=-3)]
    # i32 wraps around.
    assert results(client, "add", "add", Value(i32=(1 << 31) - 1), Value(i32=1)) == [
        Value(i32=-(1 << 31))
    ]


@pytest.mark.parametrize(
    "bits",
    [
        0x7FA00000,
        0xFFA00001,
        0x7FC00000,
        0xFFC00123,
        0x80000000,
        0x00000000,
        0x00000001,
        0x7F800000,
    ],
    ids=lambda b: f"{b:#010x}",
)
def test_f32_identity_is_bit_exact(client: GatewayClient, numeric: str, bits: int) -> None:
    [result] = results(client, numeric, "id_f32", Value(f32_bits=bits))
    assert result.WhichOneof("kind") == "f32_bits"
    assert result.f32_bits == bits
    # The guest sees the same bits as were sent.
    assert results(client, numeric, "f32_bits", Value(f32_bits=bits)) == [
        Value(i32=struct.unpack("<i", struct.pack("<I", bits))[0])
    ]


@pytest.mark.parametrize(
    "bits",
    [0x7FF4000000000001, 0xFFF0000000000001, 0x7FF8000000000000, 0x8000000000000000, 0x1],
    ids=lambda b: f"{b:#018x}",
)
def test_f64_identity_is_bit_exact(client: GatewayClient, numeric: str, bits: int) -> None:
    [result] = results(client, numeric, "id_f64", Value(f64_bits=bits))
    assert result.WhichOneof("kind") == "f64_bits"
    assert result.f64_bits == bits


def test_f32_add(client: GatewayClient, numeric: str) -> None:
    a, b = f32_bits(0.1), f32_bits(0.2)
    expected = f32_bits(f32_value(a) + f32_value(b))  # one f32 rounding of the exact sum
    assert results(client, numeric, "add_f32", Value(f32_bits=a), Value(f32_bits=b)) == [
        Value(f32_bits=expected)
    ]
    assert results(
        client, numeric, "add_f32", Value(f32_bits=0x80000000), Value(f32_bits=0x80000000)
    ) == [Value(f32_bits=0x80000000)]
    assert results(
        client, numeric, "add_f32", Value(f32_bits=0x80000000), Value(f32_bits=0x00000000)
    ) == [Value(f32_bits=0x00000000)]
    largest = 0x7F7FFFFF
    assert results(
        client, numeric, "add_f32", Value(f32_bits=largest), Value(f32_bits=largest)
    ) == [Value(f32_bits=0x7F800000)]


def test_f64_mul(client: GatewayClient, numeric: str) -> None:
    assert results(
        client, numeric, "mul_f64", Value(f64_bits=f64_bits(0.1)), Value(f64_bits=f64_bits(0.3))
    ) == [Value(f64_bits=f64_bits(0.1 * 0.3))]
    assert results(
        client, numeric, "mul_f64", Value(f64_bits=f64_bits(-0.0)), Value(f64_bits=f64_bits(5.0))
    ) == [Value(f64_bits=0x8000000000000000)]
    assert results(
        client, numeric, "mul_f64", Value(f64_bits=f64_bits(1e308)), Value(f64_bits=f64_bits(10.0))
    ) == [Value(f64_bits=0x7FF0000000000000)]


@pytest.mark.parametrize("number", [I64_MIN, I64_MAX, -1, 0, 1 << 53 | 1])
def test_i64_identity(client: GatewayClient, numeric: str, number: int) -> None:
    [result] = results(client, numeric, "id_i64", Value(i64=number))
    assert result.WhichOneof("kind") == "i64"
    assert result.i64 == number


def test_i64_add_wraps_around(client: GatewayClient, numeric: str) -> None:
    assert results(client, numeric, "add_i64", Value(i64=I64_MAX), Value(i64=1)) == [
        Value(i64=I64_MIN)
    ]
    assert results(client, numeric, "add_i64", Value(i64=I64_MIN), Value(i64=-1)) == [
        Value(i64=I64_MAX)
    ]
    assert results(client, numeric, "add_i64", Value(i64=1 << 40), Value(i64=-(1 << 41))) == [
        Value(i64=-(1 << 40))
    ]


def test_multi_value_results_keep_order_and_types(client: GatewayClient, numeric: str) -> None:
    assert results(client, numeric, "swap", Value(i32=-7), Value(i64=I64_MIN)) == [
        Value(i64=I64_MIN),
        Value(i32=-7),
    ]


def test_v128_travels_as_its_16_bytes(client: GatewayClient, numeric: str) -> None:
    data = bytes(range(0xF0, 0x100))
    [result] = results(client, numeric, "id_v128", Value(v128=data))
    assert result.WhichOneof("kind") == "v128"
    assert result.v128 == data


def test_signatures_are_reported_at_deploy(client: GatewayClient, numeric: str) -> None:
    exports = {e.name: e.signature for e in client.get_function(numeric).exports}
    assert list(exports["swap"].params) == [values_pb2.VALUE_TYPE_I32, values_pb2.VALUE_TYPE_I64]
    assert list(exports["swap"].results) == [values_pb2.VALUE_TYPE_I64, values_pb2.VALUE_TYPE_I32]
    assert list(exports["id_v128"].params) == [values_pb2.VALUE_TYPE_V128]
    assert list(exports["takes_ref"].params) == [values_pb2.VALUE_TYPE_FUNCREF]
