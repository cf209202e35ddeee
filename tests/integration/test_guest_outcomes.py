"""What a guest does comes back as the call's outcome: WASI output, exits, traps, deadlines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from tensorwasm.common.v1 import invocation_pb2
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm.gateway.v1 import gateway_service_pb2 as gateway_pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as gateway_pb_grpc
from tensorwasm_client.client import GatewayClient

pytestmark = pytest.mark.integration


@pytest.fixture
def echo(client: GatewayClient, wasm: Callable[[str], bytes]) -> str:
    client.create_function("echo", wasm("wasi_echo"))
    return "echo"


@pytest.fixture
def traps(client: GatewayClient, wasm: Callable[[str], bytes]) -> str:
    client.create_function("traps", wasm("traps"))
    return "traps"


def test_wasi_stdout_and_stderr(client: GatewayClient, echo: str) -> None:
    response = client.invoke(echo, "_start")

    outcome = response.outcome
    assert outcome.WhichOneof("result") == "success", outcome.failure
    assert list(outcome.success.results) == []
    assert outcome.stdout == b"hello stdout\n"
    assert outcome.stderr == b"hello stderr\n"
    assert not outcome.stdout_truncated and not outcome.stderr_truncated


def test_wasi_stdin_is_echoed_exactly(client: GatewayClient, echo: str) -> None:
    # Binary, and longer than the guest's 4096-byte read buffer.
    stdin = bytes(range(256)) * 40 + b"\r\nend\x00"

    outcome = client.invoke(echo, "_start", stdin=stdin).outcome

    assert outcome.WhichOneof("result") == "success", outcome.failure
    assert outcome.stdout == b"hello stdout\n" + stdin
    assert outcome.stderr == b"hello stderr\n"


def test_output_is_capped_per_call(stack: Any, tenant: str, echo: str) -> None:
    with grpc.insecure_channel(stack.gateway) as channel:
        response = gateway_pb_grpc.GatewayServiceStub(channel).Invoke(
            gateway_pb.InvokeRequest(
                name=f"functions/{echo}",
                stdin=b"more",
                limits=invocation_pb2.InvocationLimits(max_output_bytes=5),
            ),
            metadata=(("x-tensorwasm-tenant", tenant),),
            timeout=30,
        )
    outcome = response.outcome
    assert outcome.WhichOneof("result") == "success", outcome.failure
    assert (outcome.stdout, outcome.stdout_truncated) == (b"hello", True)
    assert (outcome.stderr, outcome.stderr_truncated) == (b"hello", True)


def test_start_is_chosen_when_no_export_is_named(client: GatewayClient, echo: str) -> None:
    response = client.invoke(echo, "", stdin=b"x")
    assert response.export_name == "_start"
    assert response.outcome.stdout == b"hello stdout\nx"


def test_proc_exit_is_a_failure_with_its_code(client: GatewayClient, echo: str) -> None:
    failure = client.invoke(echo, "exit3").outcome.failure
    assert failure.reason == "PROC_EXIT"
    assert failure.exit_code == 3
    assert failure.trap_code == invocation_pb2.TRAP_CODE_UNSPECIFIED


@pytest.mark.parametrize(
    ("export", "args", "trap_code"),
    [
        ("boom", [], invocation_pb2.TRAP_CODE_UNREACHABLE),
        ("div", [Value(i32=1), Value(i32=0)], invocation_pb2.TRAP_CODE_INTEGER_DIVISION_BY_ZERO),
        ("div", [Value(i32=-(1 << 31)), Value(i32=-1)], invocation_pb2.TRAP_CODE_INTEGER_OVERFLOW),
    ],
    ids=["unreachable", "div-by-zero", "div-overflow"],
)
def test_trap_is_a_failure_outcome_and_the_stack_keeps_serving(
    client: GatewayClient, traps: str, export: str, args: list[Value], trap_code: int
) -> None:
    response = client.invoke(traps, export, args)

    assert response.outcome.WhichOneof("result") == "failure"
    failure = response.outcome.failure
    assert failure.reason == "TRAP"
    assert invocation_pb2.TrapCode.Name(failure.trap_code) == invocation_pb2.TrapCode.Name(
        trap_code
    )
    assert failure.message
    # The same module, and the executor, still serve.
    assert list(client.invoke(traps, "ok").outcome.success.results) == [Value(i32=7)]
    assert list(
        client.invoke(traps, "div", [Value(i32=9), Value(i32=-3)]).outcome.success.results
    ) == [Value(i32=-3)]


def test_infinite_loop_hits_the_requested_deadline(client: GatewayClient, traps: str) -> None:
    response = client.invoke(traps, "spin", timeout_seconds=0.3)

    assert response.outcome.WhichOneof("result") == "failure"
    assert response.outcome.failure.reason == "DEADLINE_EXCEEDED"
    assert response.outcome.failure.trap_code == invocation_pb2.TRAP_CODE_INTERRUPT
    assert list(client.invoke(traps, "ok").outcome.success.results) == [Value(i32=7)]
