"""Group `e2e_invoke`: a unary Invoke through gateway → executor against bare grpcio echo floors."""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import wasmtime
from tensorwasm.common.v1 import values_pb2
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_client.client import GatewayClient
from tensorwasm_client.stack import LocalStack

from tests.bench.echo_server import FULL_METHOD, running_echo_server
from tests.bench.harness import Benchmark, RunConfig, group

ADD_WAT = (
    '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'
)
FUNCTION_ID = "bench-add"
# Every timed call, subject and anchors alike, carries the same deadline (sent as grpc-timeout).
CALL_TIMEOUT_SECONDS = 30.0
ECHO_UNARY = "grpcio/echo_unary"
ECHO_TWO_HOP = "grpcio/echo_two_hop"
INVOKE_ADD = "gateway/invoke_add"


def _check_add(response: pb.InvokeResponse) -> None:
    outcome = response.outcome
    if outcome.WhichOneof("result") != "success" or [v.i32 for v in outcome.success.results] != [3]:
        raise RuntimeError(f"add(1, 2) did not return 3: {outcome}")


@group("e2e_invoke")
def e2e_invoke(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
    """Starts the stack and two echo servers, deploys `add`, yields the three benchmarks."""
    with contextlib.ExitStack() as cleanup:
        temp = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tensorwasm-bench-"))
        data_dir = Path(temp)
        # Pinned so that an exporter configured in the caller's environment does not leak in;
        # "none" is also what the services do by default (no OTLP endpoint configured).
        stack = LocalStack(
            data_dir / "stack", ephemeral_ports=True, extra_env={"OTEL_TRACES_EXPORTER": "none"}
        )
        cleanup.callback(stack.stop)
        gateway = stack.start()["gateway"].grpc_address
        leaf = cleanup.enter_context(running_echo_server(data_dir / "echo-leaf.log"))
        relay = cleanup.enter_context(
            running_echo_server(data_dir / "echo-relay.log", forward=leaf)
        )

        with GatewayClient(gateway) as client:
            client.create_function(FUNCTION_ID, bytes(wasmtime.wat2wasm(ADD_WAT)))

        stub = pb_grpc.GatewayServiceStub(cleanup.enter_context(grpc.insecure_channel(gateway)))
        request = pb.InvokeRequest(
            name=f"functions/{FUNCTION_ID}",
            export_name="add",
            args=[values_pb2.Value(i32=1), values_pb2.Value(i32=2)],
        )
        response = stub.Invoke(request, timeout=CALL_TIMEOUT_SECONDS)
        _check_add(response)

        payload = b"\x5a" * request.ByteSize()
        echo = cleanup.enter_context(grpc.insecure_channel(leaf)).unary_unary(FULL_METHOD)
        two_hop = cleanup.enter_context(grpc.insecure_channel(relay)).unary_unary(FULL_METHOD)
        for call in (echo, two_hop):
            if call(payload, timeout=CALL_TIMEOUT_SECONDS) != payload:
                raise RuntimeError("the echo server did not echo the payload")

        sizes = {"request_bytes": len(payload), "response_bytes": response.ByteSize()}
        echo_sizes = {"request_bytes": len(payload), "response_bytes": len(payload)}
        yield [
            Benchmark(
                ECHO_UNARY,
                functools.partial(echo, payload, timeout=CALL_TIMEOUT_SECONDS),
                description="bare grpc.aio echo server in another process, sync client",
                params=echo_sizes,
            ),
            Benchmark(
                ECHO_TWO_HOP,
                functools.partial(two_hop, payload, timeout=CALL_TIMEOUT_SECONDS),
                anchors=(ECHO_UNARY,),
                description="bare grpc.aio echo relay -> echo server: the two-hop floor",
                params=echo_sizes,
            ),
            Benchmark(
                INVOKE_ADD,
                functools.partial(stub.Invoke, request, timeout=CALL_TIMEOUT_SECONDS),
                anchors=(ECHO_UNARY, ECHO_TWO_HOP),
                description="unary Invoke add(1, 2) via gateway -> executor, sync client",
                params=sizes,
            ),
        ]
