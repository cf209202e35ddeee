"""Bad requests get the documented status code and ErrorInfo reason, and change nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm.gateway.v1 import gateway_service_pb2 as gateway_pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as gateway_pb_grpc
from tensorwasm_client.client import GatewayClient, TensorWasmError
from tensorwasm_common.status import error_from_rpc

pytestmark = pytest.mark.integration


def error_of(call: Callable[[], object]) -> tuple[str, str]:
    with pytest.raises(TensorWasmError) as caught:
        call()
    return caught.value.code, caught.value.reason


@pytest.fixture
def add(client: GatewayClient, wasm: Callable[[str], bytes]) -> str:
    client.create_function("add", wasm("add"))
    return "add"


def assert_absent(client: GatewayClient, function_id: str) -> None:
    assert error_of(lambda: client.get_function(function_id)) == (
        "NOT_FOUND",
        "FUNCTION_NOT_FOUND",
    )
    assert [f.name for f in client.list_functions()] == []


@pytest.mark.parametrize(
    "module", [b"", b"garbage, not wasm", b"\x7fELF\x02\x01\x01\x00"], ids=["empty", "text", "elf"]
)
def test_bytes_without_the_wasm_magic_are_rejected(client: GatewayClient, module: bytes) -> None:
    assert error_of(lambda: client.create_function("junk", module)) == (
        "INVALID_ARGUMENT",
        "INVALID_WASM",
    )
    assert_absent(client, "junk")


def test_truncated_module_is_rejected_by_the_executor(
    client: GatewayClient, wasm: Callable[[str], bytes]
) -> None:
    truncated = wasm("add")[:-5]
    assert truncated.startswith(b"\x00asm")

    with pytest.raises(TensorWasmError) as caught:
        client.create_function("truncated", truncated)

    assert (caught.value.code, caught.value.reason) == ("INVALID_ARGUMENT", "INVALID_WASM")
    assert len(caught.value.metadata["digest"]) == 64  # the executor's error, passed through
    assert_absent(client, "truncated")


def test_unknown_function(client: GatewayClient) -> None:
    expected = ("NOT_FOUND", "FUNCTION_NOT_FOUND")
    assert error_of(lambda: client.invoke("missing", "add")) == expected
    assert error_of(lambda: client.get_function("missing")) == expected
    assert error_of(lambda: client.delete_function("missing")) == expected


def test_unknown_export(client: GatewayClient, add: str) -> None:
    with pytest.raises(TensorWasmError) as caught:
        client.invoke(add, "sub", [Value(i32=1), Value(i32=2)])
    assert (caught.value.code, caught.value.reason) == ("INVALID_ARGUMENT", "EXPORT_NOT_FOUND")
    assert caught.value.metadata["export"] == "sub"


def test_several_exports_and_none_named(
    client: GatewayClient, wasm: Callable[[str], bytes]
) -> None:
    client.create_function("traps", wasm("traps"))
    assert error_of(lambda: client.invoke("traps", "")) == ("INVALID_ARGUMENT", "EXPORT_REQUIRED")


@pytest.mark.parametrize(
    "args",
    [
        [],
        [Value(i32=1)],
        [Value(i32=1), Value(i32=2), Value(i32=3)],
        [Value(i64=1), Value(i64=2)],
        [Value(i32=1), Value(f32_bits=0)],
        [Value(f64_bits=0), Value(i32=2)],
        [Value(i32=1), Value()],
    ],
    ids=["none", "too-few", "too-many", "i64s", "f32-second", "f64-first", "unset-value"],
)
def test_argument_mismatch(client: GatewayClient, add: str, args: list[Value]) -> None:
    assert error_of(lambda: client.invoke(add, "add", args)) == (
        "INVALID_ARGUMENT",
        "ARGUMENT_MISMATCH",
    )
    # The function is unharmed.
    assert list(
        client.invoke(add, "add", [Value(i32=1), Value(i32=2)]).outcome.success.results
    ) == [Value(i32=3)]


def test_reference_types_cannot_be_called(
    client: GatewayClient, wasm: Callable[[str], bytes]
) -> None:
    client.create_function("numeric", wasm("numeric"))
    assert error_of(lambda: client.invoke("numeric", "takes_ref")) == (
        "INVALID_ARGUMENT",
        "UNSUPPORTED_VALUE_TYPE",
    )


def test_v128_of_the_wrong_length(client: GatewayClient, wasm: Callable[[str], bytes]) -> None:
    client.create_function("numeric", wasm("numeric"))
    assert error_of(lambda: client.invoke("numeric", "id_v128", [Value(v128=b"short")])) == (
        "INVALID_ARGUMENT",
        "INVALID_VALUE",
    )


@pytest.mark.parametrize(
    "function_id", ["Add", "1add", "add_one", "", "a" * 64, "add/one", "-add", "add one"]
)
def test_bad_function_id(
    client: GatewayClient, wasm: Callable[[str], bytes], function_id: str
) -> None:
    assert error_of(lambda: client.create_function(function_id, wasm("add"))) == (
        "INVALID_ARGUMENT",
        "INVALID_NAME",
    )
    assert [f.name for f in client.list_functions()] == []


@pytest.mark.parametrize(
    "name",
    ["functions/Add", "functions/", "functions/a b", "functions/x/y", "add", "function/add", ""],
)
def test_bad_resource_name(stack: Any, tenant: str, add: str, name: str) -> None:
    metadata = (("x-tensorwasm-tenant", tenant),)
    with grpc.insecure_channel(stack.gateway) as channel:
        stub = gateway_pb_grpc.GatewayServiceStub(channel)
        calls = [
            (stub.GetFunction, gateway_pb.GetFunctionRequest(name=name)),
            (stub.Invoke, gateway_pb.InvokeRequest(name=name)),
            (stub.DeleteFunction, gateway_pb.DeleteFunctionRequest(name=name)),
        ]
        for method, request in calls:
            with pytest.raises(grpc.RpcError) as caught:
                method(request, metadata=metadata, timeout=10)
            error = error_from_rpc(caught.value)
            assert (error.code.name, error.reason) == ("INVALID_ARGUMENT", "INVALID_NAME")


def test_function_id_with_a_trailing_newline_is_rejected(
    client: GatewayClient, wasm: Callable[[str], bytes]
) -> None:
    assert error_of(lambda: client.create_function("add\n", wasm("add"))) == (
        "INVALID_ARGUMENT",
        "INVALID_NAME",
    )


def test_63_character_id_is_the_longest(
    client: GatewayClient, wasm: Callable[[str], bytes]
) -> None:
    function_id = "a" + "-0" * 31
    assert len(function_id) == 63
    assert client.create_function(function_id, wasm("add")).name == f"functions/{function_id}"


def test_bad_tenant(stack: Any, wasm: Callable[[str], bytes]) -> None:
    with stack.client("Not A Tenant!") as bad:
        assert error_of(lambda: bad.create_function("add", wasm("add"))) == (
            "INVALID_ARGUMENT",
            "INVALID_NAME",
        )
        assert error_of(lambda: bad.list_page(10)) == ("INVALID_ARGUMENT", "INVALID_NAME")


def test_duplicate_deploy(client: GatewayClient, wasm: Callable[[str], bytes], add: str) -> None:
    before = client.get_function(add)

    with pytest.raises(TensorWasmError) as caught:
        client.create_function(add, wasm("numeric"))

    assert (caught.value.code, caught.value.reason) == ("ALREADY_EXISTS", "FUNCTION_ALREADY_EXISTS")
    assert caught.value.metadata == {"function_id": "add"}
    assert client.get_function(add) == before  # the first module stays


def test_delete_then_redeploy(
    client: GatewayClient, wasm: Callable[[str], bytes], add: str
) -> None:
    client.delete_function(add)
    assert_absent(client, add)
    assert error_of(lambda: client.invoke(add, "add")) == ("NOT_FOUND", "FUNCTION_NOT_FOUND")

    client.create_function(add, wasm("numeric"))
    assert {e.name for e in client.get_function(add).exports} >= {"id_i32", "add_i64"}
    assert list(client.invoke(add, "id_i32", [Value(i32=5)]).outcome.success.results) == [
        Value(i32=5)
    ]


def test_unsatisfied_import_is_refused_at_deploy(
    client: GatewayClient, wasm: Callable[[str], bytes]
) -> None:
    with pytest.raises(TensorWasmError) as caught:
        client.create_function("imports", wasm("bad_import"))

    assert (caught.value.code, caught.value.reason) == ("FAILED_PRECONDITION", "UNSATISFIED_IMPORT")
    assert caught.value.metadata == {"module": "env", "name": "host_fn"}
    assert_absent(client, "imports")
