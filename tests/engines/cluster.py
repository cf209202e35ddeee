"""The multi-replica proof: TensorWasm on PostgreSQL and SeaweedFS, every tier replicated,
under load while one replica of each tier is killed -9 and started again.

The cluster, all on loopback: PostgreSQL (the gateways' shared state and the stores'
shared index), SeaweedFS (the stores' objects), 2 gateways, 3 executors, 2 snapshot-store
replicas behind one target, a dispatcher and a jit cache. Clients reach the gateways with
bearer tokens, so the (token, tenant) rate limit applies, and it is shared by both
gateways through the database.

The load: `callers` threads invoke `add(a, b)` of twelve functions (each returns
a + b + its own constant, so an answer from the wrong function is seen), each call going
to the other gateway than the caller's last one, as a load balancer would, and a refused
or failed call tried again at once through the other. The functions are chosen so that each
executor is the first choice of four of them. A deploy loop deploys a new module after
another through alternating gateways and calls each new function through the other one.

The faults, in turn: kill -9 a gateway, an executor, a store replica; each is started
again once the calls have been failure-free for a while. Then the checks:
- no acknowledged deploy lost: every function whose CreateFunction returned OK is listed
  by both gateways and answers through the gateway it was not deployed on;
- no wrong answer;
- no duplicate execution: no request id appears twice in the executors' call logs;
- the rate limit held across both gateways: the calls of the rate-limited tenant admitted
  in all are at most the burst plus the rate times the run's length (plus the grants two
  gateways may hold), and both gateways refused some;
- each fault was recovered: calls succeed again after the kill, and the restarted replica
  takes work again.

The figures (recovery per fault: how long calls failed after the kill; how soon after the
restarted replica reported SERVING it served its first call) are printed by
`make cluster-demo` (`python -m tests.engines.cluster`); the integration test
(tests/integration/test_cluster.py) asserts the checks, never the times.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import random
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import blake3
import wasmtime
from tensorwasm.common.v1 import values_pb2
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm_client.client import GatewayClient, TensorWasmError
from tensorwasm_client.retries import RetryPolicy
from tensorwasm_client.stack import LocalStack, ServiceProcess
from tensorwasm_gateway.routing.rendezvous import rendezvous_order

from tests.engines.postgres import PostgresServer, postgres_bin_dir
from tests.engines.seaweedfs import SeaweedFS

GATEWAYS = ("gateway", "gateway-2")
EXECUTORS = ("executor", "executor-2", "executor-3")
STORES = ("snapshot", "snapshot-2")
WORK_TENANT, WORK_TOKEN = "work", "work-token-7c1d0a"
DEPLOY_TENANT, DEPLOY_TOKEN = "deploy", "deploy-token-52e9b4"
FUNCTIONS_PER_EXECUTOR = 4
# The (token, tenant) rate limit of both gateways: low enough that the callers exceed it.
RATE_QPS = 20.0
RATE_BURST = 10
# Every wait is for a condition, bounded by this (a loaded machine may be slow).
WAIT_SECONDS = 120.0
# A fault is over when the calls have been failure-free this long after the kill.
QUIET_SECONDS = 3.0
NO_RETRY = RetryPolicy(max_attempts=1)
DEPLOYER = -1  # the deploy loop's caller index
T = TypeVar("T")


def add_module(constant: int) -> bytes:
    """`add(a, b) = a + b + constant`: each constant is a module of its own digest."""
    return bytes(
        wasmtime.wat2wasm(
            f"""(module (func (export "add") (param i32 i32) (result i32)
                 local.get 0 local.get 1 i32.add i32.const {constant} i32.add))"""
        )
    )


def i32(value: int) -> values_pb2.Value:
    return values_pb2.Value(i32=value)


def retrying(call: Callable[[], T]) -> T:
    """`call` until it is neither refused nor sent to a replica still starting (setup and
    the final checks only)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            return call()
        except TensorWasmError as exc:
            if exc.code not in _SETUP_RETRIED or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wait_for(predicate: Callable[[], bool], what: str, seconds: float = WAIT_SECONDS) -> None:
    """Polls `predicate` until it holds; fails naming `what` past `seconds`."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise ClusterCheckError(f"timed out waiting for {what}")
        time.sleep(0.05)


class ClusterCheckError(AssertionError):
    """A check of the proof failed (or a condition never came)."""


@dataclass
class Attempt:
    """One call attempt of the load."""

    start: float  # time.time()
    end: float
    gateway: str
    ok: bool
    code: str = ""  # the error's reason ("" on success)
    caller: int = 0  # the caller's index (DEPLOYER: the deploy loop)
    refused: bool = False  # shed (RESOURCE_EXHAUSTED) or not sent: not a failed call
    rate_limited: bool = False  # refused by the rate limit
    not_sent: bool = False  # the gateway could not be reached: no byte of the call left


@dataclass
class FaultReport:
    """One kill -9 and restart, as measured."""

    service: str
    killed_at: float
    failed_calls: int = 0
    failed_deploys: int = 0
    recovery_seconds: float = 0.0  # from the kill to its last failed call (0: none failed)
    restarted_serving_at: float = 0.0
    first_use_seconds: float = math.nan  # from SERVING to the replica's first call
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class ProofReport:
    """Everything the proof measured; `violations` empty means every check held."""

    faults: list[FaultReport] = field(default_factory=list)
    calls_ok: int = 0
    wrong_answers: int = 0
    acknowledged_deploys: int = 0
    lost_deploys: list[str] = field(default_factory=list)
    duplicate_request_ids: list[str] = field(default_factory=list)
    rate_admitted: int = 0
    rate_bound: float = 0.0
    rate_refused_by_gateway: dict[str, int] = field(default_factory=dict)
    cross_gateway_checked: int = 0
    violations: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"calls answered: {self.calls_ok}, wrong answers: {self.wrong_answers}",
            f"acknowledged deploys: {self.acknowledged_deploys}, lost: {len(self.lost_deploys)}"
            f", each invoked through the other gateway: {self.cross_gateway_checked}",
            f"duplicate request ids in the executors' call logs: {len(self.duplicate_request_ids)}",
            f"rate limit ({RATE_QPS:g}/s, burst {RATE_BURST}, both gateways together): "
            f"admitted {self.rate_admitted} <= bound {self.rate_bound:.0f}; refused by "
            + ", ".join(f"{g} {n}" for g, n in sorted(self.rate_refused_by_gateway.items())),
            "",
            f"{'fault (kill -9)':<16}{'failed calls':>13}{'failed deploys':>15}"
            f"{'recovery s':>12}{'restart: first call s':>23}",
        ]
        for fault in self.faults:
            lines.append(
                f"{fault.service:<16}{fault.failed_calls:>13}{fault.failed_deploys:>15}"
                f"{fault.recovery_seconds:>12.2f}{fault.first_use_seconds:>23.2f}"
            )
            if fault.errors:
                lines.append(
                    "    errors: " + ", ".join(f"{k} x{v}" for k, v in fault.errors.most_common())
                )
        lines.append("")
        lines.append("violations: " + ("none" if not self.violations else ""))
        lines += [f"  - {v}" for v in self.violations]
        return "\n".join(lines)


class Cluster:
    """The engines and the replicated services; a context manager that tears all down."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.postgres: PostgresServer | None = None
        self.seaweedfs: SeaweedFS | None = None
        self.stack: LocalStack | None = None

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed: run `make engines-postgres`")
        self.postgres = PostgresServer(bin_dir)
        self.postgres.start()
        self.seaweedfs = SeaweedFS(self.work_dir / "seaweedfs").start()
        bucket = self.seaweedfs.create_bucket("cluster")
        env = {
            "TENSORWASM_GATEWAY_DATABASE_URL": self.postgres.create_database(),
            "TENSORWASM_SNAPSHOT_DATABASE_URL": self.postgres.create_database(),
            "TENSORWASM_SNAPSHOT_BLOB_URL": self.seaweedfs.blob_url(bucket),
            **self.seaweedfs.env(),
            "TENSORWASM_GATEWAY_TOKENS": (
                f"{WORK_TOKEN}:tenant={WORK_TENANT};{DEPLOY_TOKEN}:tenant={DEPLOY_TENANT}"
            ),
            "TENSORWASM_GATEWAY_RATE_LIMIT_TENANT_QPS": str(RATE_QPS),
            "TENSORWASM_GATEWAY_RATE_LIMIT_TENANT_BURST": str(RATE_BURST),
            "TENSORWASM_EXECUTOR_CALL_LOG": "true",
        }
        self.stack = LocalStack(
            self.work_dir / "stack",
            ephemeral_ports=True,
            executor_replicas=len(EXECUTORS),
            gateway_replicas=len(GATEWAYS),
            snapshot_replicas=len(STORES),
            extra_env=env,
        )
        self.stack.start(timeout_seconds=WAIT_SECONDS)

    def stop(self) -> None:
        for stop in (
            self.stack and self.stack.stop,
            self.seaweedfs and self.seaweedfs.stop,
            self.postgres and self.postgres.remove,
        ):
            if stop:
                with contextlib.suppress(Exception):
                    stop()

    @property
    def services(self) -> dict[str, ServiceProcess]:
        assert self.stack is not None
        return self.stack.services()

    def address(self, name: str) -> str:
        return self.services[name].grpc_address

    def client(self, gateway: str, tenant: str, token: str) -> GatewayClient:
        return GatewayClient(self.address(gateway), tenant=tenant, token=token, retry=NO_RETRY)

    def calls_received(self, executor: str) -> list[tuple[float, str]]:
        """(time, request id) of each Invoke in one executor's call log, in order."""
        path = Path(self.services[executor].log_path)
        found = []
        for line in path.read_text(errors="replace").splitlines():
            if '"call received"' not in line:
                continue
            record = json.loads(line)
            if record.get("method") == "Invoke":
                stamp = datetime.fromisoformat(record["time"].replace("Z", "+00:00"))
                found.append((stamp.timestamp(), record.get("request_id", "")))
        return found


class Load:
    """The callers and the deploy loop, recording every attempt."""

    def __init__(self, cluster: Cluster, callers: int) -> None:
        self.cluster = cluster
        self.callers = callers
        self.functions: dict[str, int] = {}  # function id -> its constant
        self.attempts: list[Attempt] = []
        self.deploy_attempts: list[Attempt] = []
        self.acknowledged: dict[str, tuple[str, int]] = {}  # id -> (gateway, constant)
        self.wrong: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def deploy_functions(self) -> None:
        """Twelve functions, each executor the first choice of four."""
        executors = [self.cluster.address(name) for name in EXECUTORS]
        wanted = Counter({address: FUNCTIONS_PER_EXECUTOR for address in executors})
        constant = 1000
        with self.cluster.client(GATEWAYS[0], WORK_TENANT, WORK_TOKEN) as client:
            while +wanted:
                constant += 1
                wasm = add_module(constant)
                first = rendezvous_order(blake3.blake3(wasm).hexdigest(), executors)[0]
                if wanted[first] <= 0:
                    continue
                wanted[first] -= 1
                function_id = f"f{constant}"
                retrying(functools.partial(client.create_function, function_id, wasm))
                self.functions[function_id] = constant
        with self.cluster.client(GATEWAYS[1], WORK_TENANT, WORK_TOKEN) as client:
            for function_id, constant in self.functions.items():  # warm, through the other
                reply = retrying(
                    functools.partial(client.invoke, function_id, "add", [i32(1), i32(2)])
                )
                if reply.outcome.success.results[0].i32 != 3 + constant:
                    raise ClusterCheckError(f"{function_id} answered {reply.outcome}")

    def start(self) -> None:
        for index in range(self.callers):
            self._spawn(self._caller, index)
        self._spawn(self._deployer, 0)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=WAIT_SECONDS)

    def _spawn(self, target: Callable[[int], None], index: int) -> None:
        thread = threading.Thread(target=target, args=(index,), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _through(
        self,
        clients: Clients,
        first: str,
        call: Callable[[GatewayClient], T],
        *,
        caller: int,
        deploy: bool = False,
    ) -> tuple[str, T | None]:
        """`call` through gateway `first`, or through the other when `first` could not be
        reached (nothing was sent: as a load balancer would); every attempt is recorded.
        Returns the gateway that answered and its reply (None when the call failed)."""
        record = self._record_deploy if deploy else self._record
        order = [first, *(g for g in GATEWAYS if g != first)]
        for gateway in order:
            start = time.time()
            try:
                reply = call(clients.get(gateway))
            except TensorWasmError as exc:
                clients.failed(gateway, exc)
                record(refused(start, gateway, exc, caller))
                if exc.not_sent:
                    continue
                if exc.code == "RESOURCE_EXHAUSTED":
                    self._stop.wait(0.02)
                return gateway, None
            record(Attempt(start, time.time(), gateway, True, caller=caller))
            return gateway, reply
        return order[-1], None

    def _caller(self, index: int) -> None:
        rng = random.Random(index)
        clients = Clients(self.cluster, WORK_TENANT, WORK_TOKEN)
        functions = list(self.functions.items())
        turn = index
        try:
            while not self._stop.is_set():
                function_id, constant = functions[turn % len(functions)]
                a, b = rng.randrange(1 << 20), rng.randrange(1 << 20)
                args = [i32(a), i32(b)]
                _, reply = self._through(
                    clients,
                    GATEWAYS[turn % 2],
                    lambda c, f=function_id, v=args: c.invoke(f, "add", v),  # type: ignore[misc]
                    caller=index,
                )
                turn += 1
                if reply is not None and _answer(reply) != a + b + constant:
                    with self._lock:
                        self.wrong.append(f"{function_id}({a}, {b}) = {reply.outcome}")
        finally:
            clients.close()

    def _deployer(self, _index: int) -> None:
        clients = Clients(self.cluster, DEPLOY_TENANT, DEPLOY_TOKEN)
        constant = 100_000
        try:
            while not self._stop.is_set():
                constant += 1
                function_id, wasm = f"d{constant}", add_module(constant)
                home, created = self._through(
                    clients,
                    GATEWAYS[constant % 2],
                    lambda c, f=function_id, w=wasm: c.create_function(f, w),  # type: ignore[misc]
                    caller=DEPLOYER,
                    deploy=True,
                )
                if created is None:
                    continue
                with self._lock:
                    self.acknowledged[function_id] = (home, constant)
                # Deployed through one gateway, called through the other at once.
                other = GATEWAYS[1 - GATEWAYS.index(home)]
                _, reply = self._through(
                    clients,
                    other,
                    lambda c, f=function_id: c.invoke(f, "add", [i32(5), i32(6)]),  # type: ignore[misc]
                    caller=DEPLOYER,
                    deploy=True,
                )
                if reply is not None and _answer(reply) != 11 + constant:
                    with self._lock:
                        self.wrong.append(f"{function_id} through {other}: {reply.outcome}")
        finally:
            clients.close()

    def _record(self, attempt: Attempt) -> None:
        with self._lock:
            self.attempts.append(attempt)

    def _record_deploy(self, attempt: Attempt) -> None:
        with self._lock:
            self.deploy_attempts.append(attempt)

    def snapshot(self) -> tuple[list[Attempt], list[Attempt]]:
        with self._lock:
            return list(self.attempts), list(self.deploy_attempts)


def refused(start: float, gateway: str, exc: TensorWasmError, caller: int) -> Attempt:
    """The attempt of a call that failed with `exc`. A RESOURCE_EXHAUSTED refusal (the
    rate limit, a concurrency cap) is load shedding, and a gateway that could not be reached
    (nothing sent) a reroute: neither is a failed call."""
    return Attempt(
        start, time.time(), gateway, False, exc.reason or exc.code, caller=caller,
        refused=exc.code == "RESOURCE_EXHAUSTED" or exc.not_sent,
        rate_limited=exc.reason == "RATE_LIMITED", not_sent=exc.not_sent,
    )  # fmt: skip


def _answer(reply: pb.InvokeResponse) -> int | None:
    results = reply.outcome.success.results
    return results[0].i32 if results else None


class Clients:
    """One caller's client per gateway; a client whose gateway could not be reached is
    replaced (a fresh channel reconnects at once, where grpc's backoff may wait seconds)."""

    def __init__(self, cluster: Cluster, tenant: str, token: str) -> None:
        self._cluster, self._tenant, self._token = cluster, tenant, token
        self._clients: dict[str, GatewayClient] = {}

    def get(self, gateway: str) -> GatewayClient:
        if gateway not in self._clients:
            self._clients[gateway] = self._cluster.client(gateway, self._tenant, self._token)
        return self._clients[gateway]

    def failed(self, gateway: str, exc: TensorWasmError) -> None:
        if exc.code == "UNAVAILABLE" and gateway in self._clients:
            self._clients.pop(gateway).close()

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def run_proof(
    cluster: Cluster, *, callers: int = 8, log: Callable[[str], None] = lambda _: None
) -> ProofReport:
    """Runs the load, the three faults and the checks; returns what was measured."""
    report = ProofReport()
    load = Load(cluster, callers)
    load.deploy_functions()
    log(f"{len(load.functions)} functions deployed; load starts")
    run_started = time.time()
    load.start()
    try:
        _wait_settled(load, since=time.time())
        for victim in (GATEWAYS[1], EXECUTORS[1], STORES[1]):
            log(f"kill -9 {victim}")
            report.faults.append(_fault(cluster, load, victim))
            log(f"{victim} back")
        _wait_settled(load, since=time.time())
    finally:
        load.stop()
    run_ended = time.time()
    attempts, deploys = load.snapshot()
    report.calls_ok = sum(1 for a in attempts if a.ok)
    report.wrong_answers = len(load.wrong)
    _check_deploys(cluster, load, report)
    _check_duplicates(cluster, report)
    _check_rate(attempts, run_started, run_ended, report)
    for fault in report.faults:
        if math.isnan(fault.first_use_seconds):
            report.violations.append(f"{fault.service} took no work after its restart")
    if load.wrong:
        report.violations.append(f"{len(load.wrong)} wrong answers, e.g. {load.wrong[0]}")
    if not deploys or not any(d.ok for d in deploys):
        report.violations.append("the deploy loop deployed nothing")
    return report


def _wait_settled(load: Load, *, since: float) -> float:
    """Waits until calls and deploys have succeeded with no failure (other than a rate-limit
    refusal) for QUIET_SECONDS, each caller included; returns the time of the last failure
    after `since` (`since` when none)."""

    def last_failure() -> float:
        attempts, deploys = load.snapshot()
        failures = [a.end for a in (*attempts, *deploys) if not a.ok and not a.refused]
        return max([since, *(t for t in failures if t >= since)])

    def settled() -> bool:
        now, last = time.time(), last_failure()
        if now - last < QUIET_SECONDS:
            return False
        attempts, deploys = load.snapshot()
        served_after = {a.caller for a in attempts if a.ok and a.start > last}
        return len(served_after) == load.callers and any(d.ok and d.start > last for d in deploys)

    wait_for(settled, "the calls to succeed again")
    return last_failure()


def _fault(cluster: Cluster, load: Load, victim: str) -> FaultReport:
    assert cluster.stack is not None
    killed_at = time.time()
    cluster.stack.kill(victim)
    fault = FaultReport(victim, killed_at)
    last = _wait_settled(load, since=killed_at)
    fault.recovery_seconds = last - killed_at
    cluster.stack.start_service(victim, timeout_seconds=WAIT_SECONDS)
    fault.restarted_serving_at = time.time()
    fault.first_use_seconds = _first_use(cluster, load, victim, fault.restarted_serving_at)
    attempts, deploys = load.snapshot()
    window = [a for a in attempts if killed_at <= a.end <= fault.restarted_serving_at]
    deploy_window = [d for d in deploys if killed_at <= d.end <= fault.restarted_serving_at]
    fault.failed_calls = sum(1 for a in window if not a.ok and not a.refused)
    fault.failed_deploys = sum(1 for d in deploy_window if not d.ok and not d.refused)
    fault.errors = Counter(a.code for a in (*window, *deploy_window) if a.code and not a.refused)
    return fault


def _first_use(cluster: Cluster, load: Load, victim: str, serving_at: float) -> float:
    """Seconds from the restarted replica's SERVING to the first call it served (nan if
    none came within the wait)."""
    found: list[float] = []

    def used() -> bool:
        if victim in GATEWAYS:
            attempts, _ = load.snapshot()
            found[:] = [a.end for a in attempts if a.gateway == victim and a.ok
                        and a.start >= serving_at]  # fmt: skip
        elif victim in EXECUTORS:
            found[:] = [t for t, _ in cluster.calls_received(victim) if t >= serving_at]
        else:
            found[:] = _store_calls_after(cluster, victim, serving_at)
        return bool(found)

    with contextlib.suppress(ClusterCheckError):
        wait_for(used, f"{victim} to take work again")
    return min(found) - serving_at if found else math.nan


def _store_calls_after(cluster: Cluster, store: str, since: float) -> list[float]:
    """[now] once the restarted store replica has served a call other than a health
    check (its request counter, reset by the restart, is above zero), else []."""
    address = cluster.services[store].metrics_address
    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return []
    for line in text.splitlines():
        if (
            line.startswith("tensorwasm_grpc_server_requests_total{")
            and "Health" not in line
            and float(line.rsplit(" ", 1)[1]) > 0
        ):
            return [time.time()]
    return []


def _check_deploys(cluster: Cluster, load: Load, report: ProofReport) -> None:
    acknowledged = dict(load.acknowledged)
    report.acknowledged_deploys = len(acknowledged)
    for gateway in GATEWAYS:
        with cluster.client(gateway, DEPLOY_TENANT, DEPLOY_TOKEN) as client:
            functions = retrying(functools.partial(_listed, client))
            listed = {f.name.removeprefix("functions/") for f in functions}
        missing = sorted(set(acknowledged) - listed)
        if missing:
            report.lost_deploys = sorted({*report.lost_deploys, *missing})
            report.violations.append(f"{gateway} does not list {len(missing)} acknowledged "
                                     f"deploys, e.g. {missing[0]}")  # fmt: skip
    clients = {g: cluster.client(g, DEPLOY_TENANT, DEPLOY_TOKEN) for g in GATEWAYS}
    try:
        for function_id, (home, constant) in acknowledged.items():
            other = GATEWAYS[1 - GATEWAYS.index(home)]
            reply = retrying(
                functools.partial(clients[other].invoke, function_id, "add", [i32(1), i32(1)])
            )
            answer = reply.outcome.success.results
            if not answer or answer[0].i32 != 2 + constant:
                report.violations.append(f"{function_id} through {other}: {reply}")
            report.cross_gateway_checked += 1
    finally:
        for client in clients.values():
            client.close()


def _listed(client: GatewayClient) -> list[pb.Function]:
    return list(client.list_functions())


def _check_duplicates(cluster: Cluster, report: ProofReport) -> None:
    seen = Counter(
        request_id
        for executor in EXECUTORS
        for _, request_id in cluster.calls_received(executor)
        if request_id
    )
    report.duplicate_request_ids = sorted(r for r, n in seen.items() if n > 1)
    if report.duplicate_request_ids:
        report.violations.append(
            f"{len(report.duplicate_request_ids)} request ids ran twice, e.g. "
            f"{report.duplicate_request_ids[0]}"
        )


def _check_rate(attempts: list[Attempt], started: float, ended: float, report: ProofReport) -> None:
    """The work tenant's admitted calls against what one shared bucket allows."""
    # A call admitted is one that got past the limit: answered, or failed downstream (a
    # refusal of another cap is not counted: it may come before the limit's turn).
    admitted = [a for a in attempts if not a.refused]
    report.rate_admitted = len(admitted)
    grant = max(1, math.ceil(RATE_BURST / 8))  # the most a gateway holds unspent
    report.rate_bound = RATE_BURST + RATE_QPS * (ended - started) + len(GATEWAYS) * grant
    report.rate_refused_by_gateway = dict(Counter(a.gateway for a in attempts if a.rate_limited))
    if report.rate_admitted > report.rate_bound:
        report.violations.append(
            f"the rate limit did not hold: {report.rate_admitted} calls admitted, at most "
            f"{report.rate_bound:.0f} allowed"
        )
    for gateway in GATEWAYS:
        if not report.rate_refused_by_gateway.get(gateway):
            report.violations.append(f"{gateway} never refused a call: the limit was not reached")


# What setup and the final checks try again: refusals, and a replica still starting.
_SETUP_RETRIED = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE"})


def main(argv: list[str] | None = None) -> int:
    """`make cluster-demo`: starts the cluster, runs the proof, prints the figures."""
    parser = argparse.ArgumentParser(
        prog="python -m tests.engines.cluster", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--callers", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    work_dir = Path(tempfile.mkdtemp(prefix="tensorwasm-cluster-"))
    print(f"cluster in {work_dir}: PostgreSQL, SeaweedFS, 2 gateways, 3 executors, "
          "2 store replicas, dispatcher, jit cache", flush=True)  # fmt: skip
    started = time.monotonic()
    with Cluster(work_dir) as cluster:
        print(f"up in {time.monotonic() - started:.1f} s", flush=True)
        report = run_proof(cluster, callers=args.callers, log=lambda m: print(m, flush=True))
    print(report.summary())
    if not args.keep:
        import shutil

        shutil.rmtree(work_dir, ignore_errors=True)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
