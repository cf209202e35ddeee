"""The gateway on PostgreSQL, with real processes: two gateways share one database (a
function deployed, deleted or redeployed through one is what the other serves, though the
other answers Invoke from its cache); the database going away mid-run answers UNAVAILABLE
with RetryInfo and leaves no half-written function; a bad database URL stops the gateway
at start, naming the setting."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import wasmtime
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_client.client import GatewayClient, TensorWasmError

from tests.engines.postgres import PostgresServer, running_postgres
from tests.integration.conftest import RunningStack
from tests.integration.test_gateway_replicas import SecondGateway

pytestmark = [pytest.mark.integration, pytest.mark.engines]
SETTING = "TENSORWASM_GATEWAY_DATABASE_URL"
DEADLINE_SECONDS = 60.0


def module(value: int) -> bytes:
    """A module whose `value` export returns `value`."""
    wat = f'(module (func (export "value") (result i32) i32.const {value}))'
    return bytes(wasmtime.wat2wasm(wat))


def value_of(client: GatewayClient, function_id: str) -> int:
    response = client.invoke(function_id, "value")
    return int(response.outcome.success.results[0].i32)


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.02)


def answers(client: GatewayClient, function_id: str) -> int | str:
    """The function's value, or the reason the call failed."""
    try:
        return value_of(client, function_id)
    except TensorWasmError as exc:
        return exc.reason


@pytest.fixture
def pair(
    launch_stack: Callable[..., RunningStack], postgres_url: str, tmp_path: Path
) -> Iterator[tuple[RunningStack, SecondGateway]]:
    stack = launch_stack(tmp_path / "stack", {SETTING: postgres_url})
    second = SecondGateway(
        stack,
        "gateway-b",
        {
            SETTING: postgres_url,
            "TENSORWASM_GATEWAY_SERVICE_TOKEN_FILE": str(stack.launcher.service_token_path),
        },
    )
    second.start()
    try:
        yield stack, second
    finally:
        with contextlib.suppress(Exception):
            second.stop(signal.SIGKILL)


def test_two_gateways_share_functions_and_see_each_others_changes(
    pair: tuple[RunningStack, SecondGateway],
) -> None:
    stack, second = pair
    with stack.client("shared") as a, GatewayClient(second.address, tenant="shared") as b:
        a.create_function("fn", module(1))
        assert value_of(b, "fn") == 1  # deployed through A, served by B (now cached in B)
        assert value_of(b, "fn") == 1
        a.delete_function("fn")
        wait_for(lambda: answers(b, "fn") == "FUNCTION_NOT_FOUND")
        a.create_function("fn", module(2))  # a redeploy with another module
        wait_for(lambda: answers(b, "fn") == 2)
        b.delete_function("fn")  # and the other way round
        wait_for(lambda: answers(a, "fn") == "FUNCTION_NOT_FOUND")


def _rich_error(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, float | None]:
    """The call's status code, ErrorInfo reason and RetryInfo delay (it must fail)."""
    try:
        call()
    except grpc.RpcError as exc:
        status = rpc_status.from_call(exc)  # type: ignore[arg-type]
        assert status is not None, exc
        reasons, delays = [], []
        for detail in status.details:
            info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
            if detail.Unpack(info):
                reasons.append(info.reason)
            elif detail.Unpack(retry):
                delays.append(retry.retry_delay.ToTimedelta().total_seconds())
        assert len(reasons) == 1, status
        return exc.code(), reasons[0], delays[0] if delays else None  # type: ignore[attr-defined]
    raise AssertionError("the call succeeded")


def test_database_outage_is_unavailable_and_writes_nothing_half_way(
    launch_stack: Callable[..., RunningStack], tmp_path: Path
) -> None:
    with running_postgres() as server:
        stack = launch_stack(tmp_path / "stack", {SETTING: server.url()})
        channel = grpc.insecure_channel(stack.gateway)
        stub = pb_grpc.GatewayServiceStub(channel)
        metadata = (("x-tensorwasm-tenant", "outage"),)
        with stack.client("outage") as client:
            client.create_function("before", module(7))
            server.stop("immediate")
            code, reason, retry = _rich_error(
                lambda: stub.CreateFunction(
                    pb.CreateFunctionRequest(function_id="during", wasm=module(8)),
                    metadata=metadata,
                    timeout=120,
                )
            )
            assert code is grpc.StatusCode.UNAVAILABLE
            assert reason == "UPSTREAM_UNAVAILABLE"
            assert retry is not None and retry > 0
            _restart(server)
            wait_for(lambda: _get_reason(client, "during") == "FUNCTION_NOT_FOUND")
            client.create_function("during", module(8))
            assert value_of(client, "during") == 8
            assert value_of(client, "before") == 7
        channel.close()


def _restart(server: PostgresServer) -> None:
    server.start()


def _get_reason(client: GatewayClient, function_id: str) -> str:
    try:
        client.get_function(function_id)
    except TensorWasmError as exc:
        return exc.reason
    return "FOUND"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("postgresql://nobody:wrong@127.0.0.1:1/none", "cannot connect"),
        ("mysql://u:p@127.0.0.1:3306/db", "expected sqlite"),
    ],
)
def test_a_bad_database_url_stops_the_gateway_at_start(url: str, why: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        SETTING: url,
        "TENSORWASM_GATEWAY_LISTEN_ADDRESS": "127.0.0.1:0",
        "TENSORWASM_GATEWAY_METRICS_ADDRESS": "127.0.0.1:0",
        "TENSORWASM_GATEWAY_HTTP_ADDRESS": "",
        "TENSORWASM_DATA_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "tensorwasm_gateway"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert SETTING in result.stderr
    assert why in result.stderr
    assert "wrong" not in result.stderr  # the password is never echoed
