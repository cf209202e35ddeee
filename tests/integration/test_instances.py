"""Stateful instances through the whole stack: create, call (state persists), delete,
tenant ownership, the per-tenant cap, the idle TTL, terminate during a running call."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tensorwasm.common.v1 import values_pb2
from tensorwasm_client.client import GatewayClient, TensorWasmError

from .conftest import RunningStack, start_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = start_stack(
        tmp_path_factory.mktemp("instances"),
        {"TENSORWASM_EXECUTOR_MAX_INSTANCES_PER_TENANT": "2"},
    )
    try:
        yield running
    finally:
        running.stop()


def _i32(value: int) -> values_pb2.Value:
    return values_pb2.Value(i32=value)


def _deploy(client: GatewayClient, wasm: Callable[[str], bytes]) -> None:
    client.create_function("counter", wasm("counter"))


def test_state_persists_across_calls_until_delete(
    client: GatewayClient, wasm: Callable[[str], bytes]
) -> None:
    _deploy(client, wasm)
    created = client.create_instance("counter")
    assert created.outcome.stdout == b"started\n"  # the start function ran, once
    name = created.instance.name
    assert name.startswith("instances/") and created.instance.function == "functions/counter"
    assert created.instance.idle_ttl.ToTimedelta().total_seconds() == 300
    results = [client.call_instance(name, "inc").outcome.success.results[0].i32 for _ in range(3)]
    assert results == [1, 2, 3]
    added = client.call_instance(name, "add", [_i32(10)])
    assert (added.outcome.success.results[0].i32, added.export_name) == (13, "add")
    assert client.get_instance(name).name == name
    # A fresh invocation of the function sees none of that state.
    assert client.invoke("counter", "inc").outcome.success.results[0].i32 == 1
    client.delete_instance(name)
    for call in (lambda: client.call_instance(name, "inc"), lambda: client.delete_instance(name)):
        with pytest.raises(TensorWasmError) as caught:
            call()
        assert (caught.value.code, caught.value.reason) == ("NOT_FOUND", "INSTANCE_NOT_FOUND")


def test_a_trap_or_deadline_is_an_outcome_and_the_instance_lives_on(
    client: GatewayClient, wasm: Callable[[str], bytes]
) -> None:
    _deploy(client, wasm)
    name = client.create_instance("counter").instance.name
    client.call_instance(name, "inc")
    assert client.call_instance(name, "boom").outcome.failure.reason == "TRAP"
    spun = client.call_instance(name, "spin", timeout_seconds=0.2)
    assert spun.outcome.failure.reason == "DEADLINE_EXCEEDED"
    assert client.call_instance(name, "inc").outcome.success.results[0].i32 == 2
    client.delete_instance(name)


def test_instances_belong_to_their_tenant(
    stack: RunningStack, client: GatewayClient, tenant: str, wasm: Callable[[str], bytes]
) -> None:
    _deploy(client, wasm)
    name = client.create_instance("counter").instance.name
    with stack.client(f"{tenant}-other"[:63]) as other:
        for call in (
            lambda: other.call_instance(name, "inc"),
            lambda: other.get_instance(name),
            lambda: other.delete_instance(name),
        ):
            with pytest.raises(TensorWasmError) as caught:
                call()
            assert (caught.value.code, caught.value.reason) == ("NOT_FOUND", "INSTANCE_NOT_FOUND")
    assert client.call_instance(name, "inc").outcome.success.results[0].i32 == 1  # untouched
    client.delete_instance(name)


def test_bad_names_and_arguments(client: GatewayClient, wasm: Callable[[str], bytes]) -> None:
    _deploy(client, wasm)
    for bad in ("instances/xyz", "functions/counter", "instances/" + "A" * 32):
        with pytest.raises(TensorWasmError) as caught:
            client.call_instance(bad, "inc")
        assert (caught.value.code, caught.value.reason) == ("INVALID_ARGUMENT", "INVALID_NAME")
    with pytest.raises(TensorWasmError) as caught:
        client.create_instance("missing")
    assert caught.value.reason == "FUNCTION_NOT_FOUND"
    name = client.create_instance("counter").instance.name
    with pytest.raises(TensorWasmError) as caught:
        client.call_instance(name, "add", [values_pb2.Value(i64=1)])
    assert caught.value.reason == "ARGUMENT_MISMATCH"
    with pytest.raises(TensorWasmError) as caught:
        client.call_instance(name, "nope")
    assert caught.value.reason == "EXPORT_NOT_FOUND"
    client.delete_instance(name)


def test_a_failing_start_function_creates_no_instance(
    client: GatewayClient, wasm: Callable[[str], bytes]
) -> None:
    client.create_function("start-trap", wasm("start_trap"))
    created = client.create_instance("start-trap")
    assert not created.HasField("instance")
    assert created.outcome.failure.reason == "TRAP"
    assert created.outcome.failure.trap_code != 0


def _executor_logged(stack: RunningStack, message: str) -> bool:
    """Whether the executor's log has a line whose message is `message`."""
    for raw in Path(stack.services["executor"].log_path).read_text().splitlines():
        with contextlib.suppress(ValueError):
            if json.loads(raw).get("message") == message:
                return True
    return False


def _wait_until(condition: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        time.sleep(0.02)


def test_idle_instances_expire(
    stack: RunningStack, client: GatewayClient, wasm: Callable[[str], bytes]
) -> None:
    _deploy(client, wasm)
    name = client.create_instance("counter", idle_ttl_seconds=0.3).instance.name
    assert client.call_instance(name, "inc").outcome.success.results[0].i32 == 1
    # the executor's sweep drops it; a call in between would restart the idle clock
    instance_id = name.removeprefix("instances/")
    expired = f"instance {instance_id} expired (idle ttl)"
    _wait_until(lambda: _executor_logged(stack, expired), "the executor expires the instance")
    with pytest.raises(TensorWasmError) as caught:
        client.call_instance(name, "inc")
    assert (caught.value.code, caught.value.reason) == ("NOT_FOUND", "INSTANCE_NOT_FOUND")
    with pytest.raises(TensorWasmError) as caught:  # the gateway forgot it as well
        client.get_instance(name)
    assert caught.value.reason == "INSTANCE_NOT_FOUND"


def test_delete_stops_a_running_call(client: GatewayClient, wasm: Callable[[str], bytes]) -> None:
    _deploy(client, wasm)
    name = client.create_instance("counter").instance.name
    outcome: list[object] = []
    caller = threading.Thread(
        target=lambda: outcome.append(client.call_instance(name, "spin", timeout_seconds=60))
    )
    caller.start()

    def spinning() -> bool:
        """The spin holds the instance: a probe (alone it takes milliseconds) gets no turn
        within its 10 s deadline."""
        try:
            client.call_instance(name, "inc", timeout_seconds=10.0)
        except TensorWasmError as error:
            assert error.reason in {"INSTANCE_BUSY", "DEADLINE_EXCEEDED"}, error
            return True
        return False

    _wait_until(spinning, "the spinning call starts")
    started = time.monotonic()
    client.delete_instance(name)
    caller.join(timeout=10)
    assert not caller.is_alive()
    assert time.monotonic() - started < 5
    assert outcome[0].outcome.failure.reason == "CANCELLED"  # type: ignore[attr-defined]


def test_per_tenant_cap_and_delete_frees_a_slot(
    capped: RunningStack, wasm: Callable[[str], bytes]
) -> None:
    with capped.client("busy") as busy, capped.client("calm") as calm:
        _deploy(busy, wasm)
        _deploy(calm, wasm)
        names = [busy.create_instance("counter").instance.name for _ in range(2)]
        with pytest.raises(TensorWasmError) as caught:
            busy.create_instance("counter")
        assert (caught.value.code, caught.value.reason) == (
            "RESOURCE_EXHAUSTED",
            "TENANT_CAPACITY_EXHAUSTED",
        )
        calm_name = calm.create_instance("counter").instance.name  # another tenant is fine
        busy.delete_instance(names[0])
        names[0] = busy.create_instance("counter").instance.name
        for name in names:
            busy.delete_instance(name)
        calm.delete_instance(calm_name)
