"""Routing over three real executor replicas: spread by module digest, and a kill -9 of
one replica under load fails no retried idempotent call and runs no call twice."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import wasmtime
from tensorwasm.common.v1 import values_pb2
from tensorwasm_client.client import GatewayClient, TensorWasmError
from tensorwasm_client.stack import LocalStack, ServiceProcess

pytestmark = pytest.mark.integration
EXECUTORS = ("executor", "executor-2", "executor-3")
INVOKE = "/tensorwasm.executor.v1.ExecutorService/Invoke"
MODULES = 24


def module(index: int) -> bytes:
    """`add`; `count(n)`, which loops n times and answers n; and an export that makes
    each module's digest its own."""
    return bytes(
        wasmtime.wat2wasm(
            '(module (func (export "add") (param i32 i32) (result i32)'
            " local.get 0 local.get 1 i32.add)"
            ' (func (export "count") (param i32) (result i32) (local i32)'
            " (loop $l (local.set 1 (i32.add (local.get 1) (i32.const 1)))"
            " (br_if $l (i32.lt_u (local.get 1) (local.get 0)))) (local.get 1))"
            f' (func (export "v{index}")))'
        )
    )


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def series(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith((name + "{", name + " ")):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def executed(service: ServiceProcess) -> float:
    """Invoke calls the executor handled (any status)."""
    return series(
        scrape(service.metrics_address),
        "tensorwasm_grpc_server_requests_total",
        service="executor",
        method=INVOKE,
    )


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[LocalStack, dict[str, ServiceProcess]]]:
    yield from started_fleet(tmp_path, health_interval_seconds=0.5)


@pytest.fixture
def fleet_slow_health(tmp_path: Path) -> Iterator[tuple[LocalStack, dict[str, ServiceProcess]]]:
    """A fleet whose gateway asks the replicas' health only every minute: a replica that
    shuts down keeps being routed to, as in the moments before a health check sees it."""
    yield from started_fleet(tmp_path, health_interval_seconds=60)


def started_fleet(
    tmp_path: Path, *, health_interval_seconds: float
) -> Iterator[tuple[LocalStack, dict[str, ServiceProcess]]]:
    launcher = LocalStack(
        tmp_path / "fleet",
        ephemeral_ports=True,
        executor_replicas=3,
        extra_env={
            "TENSORWASM_GATEWAY_EXECUTOR_HEALTH_INTERVAL_SECONDS": str(health_interval_seconds),
            "TENSORWASM_EXECUTOR_MAX_IN_FLIGHT": "64",
            "TENSORWASM_EXECUTOR_MAX_IN_FLIGHT_PER_TENANT": "64",
            "TENSORWASM_EXECUTOR_CALL_LOG": "true",
        },
    )
    try:
        yield launcher, launcher.start()
    finally:
        launcher.stop()


def add(client: GatewayClient, function: str, a: int, b: int) -> int:
    args = [values_pb2.Value(i32=a), values_pb2.Value(i32=b)]
    response = client.invoke(function, "add", args)
    return int(response.outcome.success.results[0].i32)


def under_load(one: Callable[[int], None], disrupt: Callable[[], None]) -> int:
    """8 callers make calls `one(n)` (caller k: n = k, k + 8, ...) until stopped. Once 25
    have ended, `disrupt()` runs; 30 more calls end and the load stops (counted in calls,
    not seconds: a loaded machine makes fewer calls per second). -> the calls ended."""
    lock = threading.Lock()
    logical = [0]
    stop = threading.Event()

    def caller(worker: int) -> None:
        n = worker
        while not stop.is_set():
            one(n)
            n += 8
            with lock:
                logical[0] += 1

    def calls_reach(count: int) -> None:
        deadline = time.monotonic() + 120
        while logical[0] < count:
            assert time.monotonic() < deadline, f"only {logical[0]} of {count} calls ended"
            time.sleep(0.02)

    def disrupt_under_load() -> None:
        try:
            calls_reach(25)
            disrupt()
            calls_reach(logical[0] + 30)
        finally:
            stop.set()

    disrupter = threading.Thread(target=disrupt_under_load)
    disrupter.start()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(caller, range(8)))
    disrupter.join()
    return logical[0]


def test_calls_spread_over_replicas_then_survive_a_kill(
    fleet: tuple[LocalStack, dict[str, ServiceProcess]],
) -> None:
    launcher, services = fleet
    gateway = services["gateway"]
    with GatewayClient(gateway.grpc_address, tenant="routing") as client:
        for i in range(MODULES):
            client.create_function(f"f{i}", module(i))
        for i in range(MODULES):
            assert add(client, f"f{i}", i, 1) == i + 1
    counts = {name: executed(services[name]) for name in EXECUTORS}
    assert sum(counts.values()) == MODULES
    assert all(count > 0 for count in counts.values()), counts  # every replica got digests

    # Under load from 8 callers, kill -9 one replica. A caller retries UNAVAILABLE (the
    # function is pure, so the caller may); every logical call must end with the sum.
    victim = max(EXECUTORS, key=lambda n: counts[n])
    first_try_failures: list[tuple[int, int, str]] = []
    lock = threading.Lock()
    issued = [0]
    killed = threading.Event()

    def one(n: int) -> None:
        with GatewayClient(gateway.grpc_address, tenant="routing") as caller:
            for attempt in range(20):
                with lock:
                    issued[0] += 1
                try:
                    assert add(caller, f"f{n % MODULES}", n, 7) == n + 7
                    return
                except TensorWasmError as exc:
                    assert exc.code == "UNAVAILABLE", exc
                    with lock:
                        first_try_failures.append((n, attempt, exc.message))
                    time.sleep(0.05)
            raise AssertionError(f"call {n} never succeeded")

    def kill() -> None:
        launcher.kill(victim)
        killed.set()

    logical = under_load(one, kill)
    assert killed.is_set()
    assert logical > 50

    gateway_metrics = scrape(gateway.metrics_address)
    started = {
        name: series(
            gateway_metrics,
            "tensorwasm_gateway_executor_calls_total",
            replica=services[name].grpc_address,
            outcome=outcome,
        )
        for name in EXECUTORS
        for outcome in ("ok", "error")
    }
    gateway_invokes = series(
        gateway_metrics,
        "tensorwasm_grpc_server_requests_total",
        service="gateway",
        method="/tensorwasm.gateway.v1.GatewayService/Invoke",
    )
    total_started = sum(
        series(gateway_metrics, "tensorwasm_gateway_executor_calls_total", outcome=o)
        for o in ("ok", "error")
    )
    # every gateway Invoke was sent (started) on exactly one replica: never on two
    assert gateway_invokes == MODULES + issued[0]
    assert total_started == gateway_invokes
    # the survivors executed exactly the calls the gateway says it started there
    for name in EXECUTORS:
        if name == victim:
            continue
        sent = series(
            gateway_metrics,
            "tensorwasm_gateway_executor_calls_total",
            replica=services[name].grpc_address,
        ) - series(
            gateway_metrics,
            "tensorwasm_gateway_executor_calls_total",
            replica=services[name].grpc_address,
            outcome="not_started",
        )
        assert executed(services[name]) == sent, (name, started)
    # The executors' call logs (the killed one's file survives it): every request id the
    # gateway chose was received by at most one executor, once.
    seen: dict[str, list[str]] = {}
    for name in EXECUTORS:
        for raw in Path(services[name].log_path).read_text().splitlines():
            entry = json.loads(raw) if raw.startswith("{") else {}
            if entry.get("message") == "call received" and entry.get("method") == "Invoke":
                seen.setdefault(str(entry["request_id"]), []).append(name)
    assert "" not in seen  # the gateway sent an id with every call
    twice = {rid: names for rid, names in seen.items() if len(names) > 1}
    assert not twice, twice
    assert len(seen) >= total_started - len(first_try_failures)  # the log is complete
    assert len(seen) <= total_started
    # only calls in flight on the victim when it died can have failed (bounded by callers)
    print(
        "failovers:",
        series(gateway_metrics, "tensorwasm_gateway_executor_failovers_total"),
        "calls failed on the victim (caller retried):",
        len(first_try_failures),
    )
    assert len(first_try_failures) <= 8 * 2, first_try_failures


def test_a_replica_shut_down_under_load_fails_no_call(
    fleet_slow_health: tuple[LocalStack, dict[str, ServiceProcess]],
) -> None:
    """SIGTERM one replica under load from 8 callers that never retry, while the gateway
    still routes to it (no health check in between): every call succeeds. The calls it
    had started finish within its grace period; the gateway's call stream to it is
    answered "not run" from then on, and those calls, and the later ones (which it
    refuses), go to the other replicas."""
    launcher, services = fleet_slow_health
    gateway = services["gateway"]
    with GatewayClient(gateway.grpc_address, tenant="draining") as client:
        for i in range(MODULES):
            client.create_function(f"f{i}", module(i))
        for i in range(MODULES):  # every replica now has its call stream open
            assert add(client, f"f{i}", i, 1) == i + 1
    counts = {name: executed(services[name]) for name in EXECUTORS}
    victim = max(EXECUTORS, key=lambda n: counts[n])
    failures: list[str] = []
    lock = threading.Lock()
    stopped = threading.Event()
    # Long enough calls (tens of milliseconds) that the victim always has some running.
    loops = values_pb2.Value(i32=20_000_000)

    def one(n: int) -> None:
        with GatewayClient(gateway.grpc_address, tenant="draining") as caller:
            try:
                response = caller.invoke(f"f{n % MODULES}", "count", [loops])
                assert response.outcome.success.results[0].i32 == loops.i32, response
            except TensorWasmError as exc:
                with lock:
                    failures.append(f"{exc.code}: {exc.message}")

    def shut_down() -> None:
        launcher.stop_service(victim)  # SIGTERM, then waits for the process to end
        stopped.set()

    logical = under_load(one, shut_down)
    assert stopped.is_set()
    assert failures == []
    assert logical > 55
