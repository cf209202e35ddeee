"""Recovery from a dependency's outage with real processes: health says what a service can
still do, a service restarted by the local stack comes back on its port, and calls work
again within a bound set by the channels' maximum reconnect backoff."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorwasm.common.v1 import values_pb2
from tensorwasm_client.client import GatewayClient, TensorWasmError
from tensorwasm_common.bootstrap import dependency_health_name
from tensorwasm_common.channels import MAX_RECONNECT_BACKOFF_MS

from tests.integration.conftest import RunningStack
from tests.integration.test_invocation_durability import MODULE, wait_until

pytestmark = pytest.mark.integration
TENANT = "recovery"
# A generous multiple of the channels' maximum reconnect backoff.
RECONNECT_BOUND_SECONDS = 10 * MAX_RECONNECT_BACKOFF_MS / 1000
OUTAGE_FAILURES = 5  # failed calls seen while the dependency is down


def health(stack: RunningStack, service: str, name: str = "") -> str:
    """`service`'s grpc.health.v1 answer for `name`, or UNREACHABLE."""
    with stack.internal_channel(service) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=name), timeout=5
            )
        except grpc.RpcError as exc:
            return f"UNREACHABLE ({exc.code().name})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def add(client: GatewayClient) -> int:
    response = client.invoke("fn", "add", [values_pb2.Value(i32=2), values_pb2.Value(i32=3)])
    return int(response.outcome.success.results[0].i32)


def deploys(client: GatewayClient) -> bool:
    """True when a new function could be deployed (that needs the store)."""
    try:
        client.create_function(f"f{uuid.uuid4().hex[:12]}", MODULE)
    except TensorWasmError as exc:
        assert exc.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED"), exc
        return False
    return True


def failures_while(predicate: Callable[[], bool], count: int) -> None:
    """Keeps calling until `predicate` failed `count` times (a dependency is down)."""
    failed = 0
    deadline = time.monotonic() + 120
    while failed < count:
        assert time.monotonic() < deadline, "the calls kept succeeding"
        if not predicate():
            failed += 1


def test_a_store_outage_keeps_the_gateway_serving_and_deploys_resume_after_a_restart(
    launch_stack: Callable[..., RunningStack], tmp_path: Path
) -> None:
    stack = launch_stack(tmp_path / "stack")
    store_address = stack.services["snapshot"].grpc_address
    with stack.client(TENANT) as client:
        client.create_function("fn", MODULE)
        assert add(client) == 5
        store = dependency_health_name("snapshot")
        assert health(stack, "gateway", store) == "SERVING"

        stack.launcher.stop_service("snapshot")
        failures_while(lambda: deploys(client), OUTAGE_FAILURES)
        wait_until(lambda: health(stack, "gateway", store) == "NOT_SERVING", 60)
        # the gateway still does its job: deployed functions keep working
        assert health(stack, "gateway") == "SERVING"
        assert [add(client) for _ in range(20)] == [5] * 20

        restarted = stack.launcher.start_service("snapshot")  # returns once SERVING
        assert restarted.grpc_address == store_address  # the others know this address
        back = time.monotonic()
        while not deploys(client):
            assert time.monotonic() - back <= RECONNECT_BOUND_SECONDS, "deploys did not resume"
            time.sleep(0.05)
        wait_until(lambda: health(stack, "gateway", store) == "SERVING", 60)


def test_a_dispatcher_outage_shows_on_the_executors_dependency_health(
    launch_stack: Callable[..., RunningStack], tmp_path: Path
) -> None:
    stack = launch_stack(tmp_path / "stack")
    dispatcher = dependency_health_name("dispatcher")
    wait_until(lambda: health(stack, "executor", dispatcher) == "SERVING", 60)

    stack.launcher.stop_service("dispatcher")
    wait_until(lambda: health(stack, "executor", dispatcher) == "NOT_SERVING", 60)
    assert health(stack, "executor") == "SERVING"  # it still runs wasm
    with stack.client(TENANT) as client:
        client.create_function("fn", MODULE)
        assert add(client) == 5

    stack.launcher.start_service("dispatcher")
    wait_until(lambda: health(stack, "executor", dispatcher) == "SERVING", 60)


def test_a_service_restarted_by_the_stack_keeps_its_port_and_is_reached_again(
    launch_stack: Callable[..., RunningStack], tmp_path: Path
) -> None:
    stack = launch_stack(tmp_path / "stack")
    before = stack.services["executor"]
    with stack.client(TENANT) as client:
        client.create_function("fn", MODULE)
        assert add(client) == 5
        after = stack.launcher.restart_service("executor")
        assert after.pid != before.pid
        assert after.grpc_address == before.grpc_address
        assert stack.launcher.services()["executor"] == after

        def invokes() -> bool:
            try:
                return add(client) == 5
            except TensorWasmError as exc:
                assert exc.code == "UNAVAILABLE", exc
                return False

        wait_until(invokes, 60)  # the gateway reaches the executor where it always was
