"""Hostile inputs get INVALID_ARGUMENT with a catalogued reason, never INTERNAL or a
transport error: out-of-range durations, oversized names and argument lists."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from tensorwasm.common.v1 import invocation_pb2
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm.executor.v1 import executor_service_pb2 as executor_pb
from tensorwasm.executor.v1 import executor_service_pb2_grpc as executor_pb_grpc
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_client.client import TensorWasmError
from tensorwasm_common.errors import ServiceError
from tensorwasm_common.status import MAX_MESSAGE_BYTES, error_from_rpc

pytestmark = pytest.mark.integration

# Durations a caller can send that are no valid google.protobuf.Duration.
BAD_DURATIONS = {
    "seconds-2-62": duration_pb2.Duration(seconds=2**62),
    "nanos-over-a-second": duration_pb2.Duration(seconds=1, nanos=2_000_000_000),
    "mixed-signs": duration_pb2.Duration(seconds=1, nanos=-1),
}


class Gateway:
    """A raw stub of the gateway, as one tenant: each call returns the error it raised."""

    def __init__(self, channel: grpc.Channel, tenant: str) -> None:
        self.stub = pb_grpc.GatewayServiceStub(channel)
        self.metadata = (("x-tensorwasm-tenant", tenant),)

    def error(self, method: str, request: object) -> ServiceError:
        call = getattr(self.stub, method)
        with pytest.raises(grpc.RpcError) as caught:
            reply = call(request, metadata=self.metadata, timeout=60)
            if method == "InvokeStream":
                list(reply)
        return error_from_rpc(caught.value)


@pytest.fixture
def gateway(stack: Any, tenant: str) -> Iterator[Gateway]:
    with grpc.insecure_channel(stack.gateway) as channel:
        yield Gateway(channel, tenant)


@pytest.fixture
def add(gateway: Gateway, wasm: Callable[[str], bytes]) -> str:
    gateway.stub.CreateFunction(
        pb.CreateFunctionRequest(function_id="add", wasm=wasm("add")),
        metadata=gateway.metadata,
        timeout=60,
    )
    return "functions/add"


def limits_with(timeout: duration_pb2.Duration) -> invocation_pb2.InvocationLimits:
    return invocation_pb2.InvocationLimits(timeout=timeout)


@pytest.mark.parametrize("duration", BAD_DURATIONS.values(), ids=BAD_DURATIONS.keys())
def test_an_invalid_timeout_is_refused_by_every_call_that_takes_one(
    gateway: Gateway, wasm: Callable[[str], bytes], add: str, duration: duration_pb2.Duration
) -> None:
    invoke = pb.InvokeRequest(name=add, export_name="add", limits=limits_with(duration))
    config = pb.FunctionConfig(default_limits=limits_with(duration))
    calls = {
        "CreateFunction": pb.CreateFunctionRequest(
            function_id="other", wasm=wasm("add"), config=config
        ),
        "Invoke": invoke,
        "InvokeStream": pb.InvokeStreamRequest(invocation=invoke),
        "StartInvocation": pb.StartInvocationRequest(invocation=invoke),
        "CreateInstance": pb.CreateInstanceRequest(function=add, limits=limits_with(duration)),
    }
    for method, request in calls.items():
        error = gateway.error(method, request)
        assert (error.code.name, error.reason) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT"), method
        assert error.metadata["field"].endswith("limits.timeout"), method


@pytest.mark.parametrize("duration", BAD_DURATIONS.values(), ids=BAD_DURATIONS.keys())
def test_an_invalid_idle_ttl_is_refused(
    gateway: Gateway, add: str, duration: duration_pb2.Duration
) -> None:
    error = gateway.error(
        "CreateInstance", pb.CreateInstanceRequest(function=add, idle_ttl=duration)
    )
    assert (error.code.name, error.reason) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert error.metadata["field"] == "idle_ttl"


def many_args(count: int) -> list[Value]:
    return [Value(i32=1)] * count


@pytest.mark.parametrize(
    ("export_name", "args", "field"),
    [
        ("x" * 10_000, many_args(2), "export_name"),
        ("add", many_args(10_000), "args"),
        ("add", many_args(1_000_000), "args"),
        ("add", [Value(v128=b"\x00" * (1 << 20))], "args"),
    ],
    ids=["10kb-export-name", "10k-args", "1m-args", "1mb-arg"],
)
def test_an_oversized_call_is_refused_with_a_typed_reason(
    gateway: Gateway, add: str, export_name: str, args: list[Value], field: str
) -> None:
    invoke = pb.InvokeRequest(name=add, export_name=export_name, args=args)
    calls = {
        "Invoke": invoke,
        "InvokeStream": pb.InvokeStreamRequest(invocation=invoke),
        "StartInvocation": pb.StartInvocationRequest(invocation=invoke),
    }
    for method, request in calls.items():
        error = gateway.error(method, request)
        assert (error.code.name, error.reason) == ("INVALID_ARGUMENT", "FIELD_TOO_LARGE"), method
        assert error.metadata["field"] == field


def test_an_oversized_instance_call_is_refused_with_a_typed_reason(
    gateway: Gateway, add: str
) -> None:
    created = gateway.stub.CreateInstance(
        pb.CreateInstanceRequest(function=add), metadata=gateway.metadata, timeout=60
    )
    request = pb.CallInstanceRequest(
        name=created.instance.name, export_name="add", args=many_args(10_000)
    )
    error = gateway.error("CallInstance", request)
    assert (error.code.name, error.reason) == ("INVALID_ARGUMENT", "FIELD_TOO_LARGE")


def test_the_executor_refuses_a_million_arguments_before_converting_them(stack: Any) -> None:
    invoke = executor_pb.InvokeRequest(
        module_digest="0" * 64, export_name="add", args=many_args(1_000_000), tenant="t"
    )
    calls = {
        "Invoke": invoke,
        "InvokeStream": executor_pb.InvokeStreamRequest(invocation=invoke),
        "CallInstance": executor_pb.CallInstanceRequest(
            instance_id="i", export_name="add", args=invoke.args, tenant="t"
        ),
    }
    with stack.internal_channel("executor") as channel:
        stub = executor_pb_grpc.ExecutorServiceStub(channel)
        for method, request in calls.items():
            with pytest.raises(grpc.RpcError) as caught:
                reply = getattr(stub, method)(request, timeout=60)
                if method == "InvokeStream":
                    list(reply)
            error = error_from_rpc(caught.value)
            assert (error.code.name, error.reason) == ("INVALID_ARGUMENT", "FIELD_TOO_LARGE")
            assert error.metadata == {"field": "args", "limit": "1000", "unit": "arguments"}


def test_an_error_that_echoes_a_long_input_stays_within_the_metadata_limit(
    gateway: Gateway, wasm: Callable[[str], bytes]
) -> None:
    # The refusal names the init export; echoed whole, it overflowed the trailers and
    # the caller got RESOURCE_EXHAUSTED from its own transport instead.
    config = pb.FunctionConfig(init_export="\u2603" * 10_000)
    request = pb.CreateFunctionRequest(function_id="echo", wasm=wasm("add"), config=config)
    error = gateway.error("CreateFunction", request)
    assert (error.code.name, error.reason) == ("INVALID_ARGUMENT", "INIT_EXPORT_INVALID")
    assert len(error.message.encode()) <= MAX_MESSAGE_BYTES


@pytest.mark.parametrize("size", [(1 << 20) + 1, (3 << 20) + (512 << 10)], ids=["cap+1", "3.5MiB"])
def test_a_module_between_the_module_cap_and_the_transport_cap_is_too_large(
    launch_stack: Callable[..., Any], tmp_path: Path, size: int
) -> None:
    running = launch_stack(
        tmp_path,
        {
            "TENSORWASM_GATEWAY_MAX_MODULE_BYTES": str(1 << 20),
            "TENSORWASM_GATEWAY_MAX_MESSAGE_BYTES": str(4 << 20),
        },
    )
    module = b"\x00asm\x01\x00\x00\x00" + b"\x00" * (size - 8)
    with running.client("t-big") as client, pytest.raises(TensorWasmError) as caught:
        client.create_function("big", module)
    assert (caught.value.code, caught.value.reason) == ("INVALID_ARGUMENT", "TOO_LARGE")
    assert caught.value.metadata == {"limit_bytes": str(1 << 20)}
