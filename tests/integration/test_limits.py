"""Limits through the whole stack: fuel, memory caps, and a runaway tenant that cannot
starve a light one (admission control with RESOURCE_EXHAUSTED + RetryInfo)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from tensorwasm.common.v1 import values_pb2
from tensorwasm_client.client import GatewayClient, TensorWasmError
from tensorwasm_client.stack import health

from .conftest import RunningStack

pytestmark = pytest.mark.integration

_EXECUTOR_ENV = {
    "TENSORWASM_EXECUTOR_WORKERS": "4",
    "TENSORWASM_EXECUTOR_MAX_IN_FLIGHT": "8",
    "TENSORWASM_EXECUTOR_MAX_IN_FLIGHT_PER_TENANT": "4",
    "TENSORWASM_EXECUTOR_FUEL_METERING": "1",
}


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    from .conftest import start_stack

    running = start_stack(tmp_path_factory.mktemp("limits"), _EXECUTOR_ENV)
    try:
        yield running
    finally:
        running.stop()


def _i64(value: int) -> values_pb2.Value:
    return values_pb2.Value(i64=value)


def test_fuel_and_memory_limits_end_calls_with_their_own_reasons(
    limited: RunningStack, wasm: Callable[[str], bytes]
) -> None:
    with limited.client("fuel") as client:
        client.create_function("count", wasm("count"))
        done = client.invoke("count", "count", [_i64(1000)], fuel=1_000_000)
        assert done.outcome.success.results[0].i64 == 1000
        starved = client.invoke("count", "count", [_i64(10**12)], fuel=100_000)
        assert starved.outcome.failure.reason == "FUEL_EXHAUSTED"
        # 40 pages (2.5 MiB) at instantiation do not fit under a 1 MiB cap for this call.
        capped = client.invoke("count", "big", [], max_memory_bytes=1 << 20)
        assert capped.outcome.failure.reason == "MEMORY_LIMIT_EXCEEDED"
        assert client.invoke("count", "big", []).outcome.success.results[0].i32 == 40


def test_runaway_tenant_is_capped_and_a_light_tenant_still_completes(
    limited: RunningStack, wasm: Callable[[str], bytes]
) -> None:
    with limited.client("runaway") as runaway, limited.client("light") as light:
        runaway.create_function("traps", wasm("traps"))
        light.create_function("add", wasm("add"))
    spin_outcomes: list[str] = []
    light_results: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(10 + 8)

    def spin() -> None:
        with GatewayClient(limited.gateway, tenant="runaway") as client:
            start.wait()
            try:
                response = client.invoke("traps", "spin", timeout_seconds=2.0)
                outcome = response.outcome.failure.reason
            except TensorWasmError as exc:
                outcome = f"{exc.code}/{exc.reason}"
        with lock:
            spin_outcomes.append(outcome)

    def add_five_times() -> None:
        with GatewayClient(limited.gateway, tenant="light") as client:
            start.wait()
            for _ in range(5):
                for _attempt in range(400):
                    try:
                        args = [values_pb2.Value(i32=1), values_pb2.Value(i32=2)]
                        response = client.invoke("add", "add", args)
                        break
                    except TensorWasmError as exc:
                        assert exc.code == "RESOURCE_EXHAUSTED", exc
                        time.sleep(0.05)  # RetryInfo asks for 50 ms
                else:
                    pytest.fail("the light tenant never got a slot")
                with lock:
                    light_results.append(response.outcome.success.results[0].i32)

    threads = [threading.Thread(target=spin) for _ in range(10)]
    threads += [threading.Thread(target=add_five_times) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert light_results == [3] * 40
    assert len(spin_outcomes) == 10
    assert set(spin_outcomes) <= {
        "DEADLINE_EXCEEDED",
        "RESOURCE_EXHAUSTED/TENANT_CAPACITY_EXHAUSTED",
        "RESOURCE_EXHAUSTED/EXECUTOR_SATURATED",
    }
    # All ten arrive while the first admitted ones still hold their slots (2 s each):
    # the tenant cap admits four and refuses the rest at once instead of queueing them.
    assert 1 <= spin_outcomes.count("DEADLINE_EXCEEDED") <= 4
    assert sum(o.startswith("RESOURCE_EXHAUSTED") for o in spin_outcomes) >= 6
    assert health(limited.services["executor"].grpc_address) == "SERVING"
