"""GPU tests through the whole stack (gateway -> executor -> dispatcher on the cuda
backend): the SDK's example guests (vector_add, matmul 64x64 checked in the guest against
its own reference, the error paths), device buffers, and the per-tenant memory cap holding
on the device: a 128 MiB buffer is refused under a 64 MiB cap, 32 MiB is not.

Run on a machine with an NVIDIA device: `pytest -m gpu tests/gpu`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import wasmtime
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2 as dispatcher_pb
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2_grpc as dispatcher_grpc
from tensorwasm_client.client import GatewayClient
from tensorwasm_client.stack import LocalStack

from tests.guests import load_builder

pytestmark = pytest.mark.gpu

CAP_BYTES = 64 << 20


@pytest.fixture(scope="module")
def gpu_stack(gpu_run: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    stack = LocalStack(
        tmp_path_factory.mktemp("gpu-stack"),
        ephemeral_ports=True,
        extra_env={
            "OTEL_TRACES_EXPORTER": "none",
            # cuda or nothing: the start fails without a device instead of falling back
            "TENSORWASM_DISPATCHER_BACKEND": "cuda",
            "TENSORWASM_DISPATCHER_TENANT_MEMORY_QUOTA_BYTES": str(CAP_BYTES),
        },
    )
    services = stack.start()
    try:
        with stack.internal_channel("dispatcher") as channel:
            device = dispatcher_grpc.DispatcherServiceStub(channel).GetDevice(
                dispatcher_pb.GetDeviceRequest(), timeout=30
            )
        assert device.backend == dispatcher_pb.BACKEND_CUDA, device
        yield services["gateway"].grpc_address
    finally:
        stack.stop()


def _result(response: object) -> int:
    outcome = response.outcome  # type: ignore[attr-defined]
    assert outcome.WhichOneof("result") == "success", outcome
    return int(outcome.success.results[0].i32)


@pytest.mark.parametrize("example", ["vector_add", "matmul", "cuda_errors"])
def test_sdk_examples_pass_on_the_device(gpu_stack: str, example: str) -> None:
    builder = load_builder()
    wasm = bytes(wasmtime.wat2wasm(builder.render_wat(builder.EXAMPLES / f"{example}.wat.in")))
    with GatewayClient(gpu_stack, tenant=f"gpu-{example}") as client:
        client.create_function(example.replace("_", "-"), wasm)
        response = client.invoke(example.replace("_", "-"), "run")
        assert _result(response) == 0, response.outcome.stderr


def test_device_buffers_and_the_memory_cap_on_the_device(gpu_stack: str) -> None:
    from tests.conftest import render_cuda_guest

    with GatewayClient(gpu_stack, tenant="gpu-cap") as client:
        client.create_function("buffers", render_cuda_guest("gpu_buffers"))
        assert _result(client.invoke("buffers", "run", [Value(i32=3)])) == 0
        assert _result(client.invoke("buffers", "alloc", [Value(i64=128 << 20)])) == -6
        assert _result(client.invoke("buffers", "alloc", [Value(i64=32 << 20)])) == 1
