"""Several gateway worker processes on one port (TENSORWASM_GATEWAY_PROCESSES=2), real
processes on a real PostgreSQL: calls over many separate connections are served by both
workers (seen in each worker's own /metrics, and in the gateway's one /metrics over all of
them, each series labelled with its worker), the rate limit holds in total across them,
the audit file they share stays one JSON record per line, a worker killed -9 leaves the
other serving and is restarted, SIGHUP to the supervisor reloads the tokens file in every
worker, and SIGTERM to the supervisor stops them all. Several
processes on SQLite, a port another program holds, or a worker that cannot start stop the
gateway at start."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.integration, pytest.mark.engines]
DEADLINE_SECONDS = 120.0
BURST = 5
CALLS = 64
TOKEN = secrets.token_urlsafe(24)
METHOD = "DeleteFunction"


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, f"not before the deadline: {what}"
        time.sleep(0.02)


def gone(pid: int) -> bool:
    """True once `pid` has exited: reaped, or a zombie with no thread left. Its main thread
    is a zombie while the others still exit, and its sockets close only with the last one:
    a connection the kernel gives its listening socket meanwhile would be reset."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return zombie and all(task == str(pid) for task in tasks)


class Gateway:
    """`python -m tensorwasm_gateway` with PROCESSES=2 on its own; backends unreachable
    (DeleteFunction of a missing function needs only the registry database)."""

    def __init__(
        self, tmp_path: Path, database_url: str, extra_env: dict[str, str] | None = None
    ) -> None:
        self.ready_file = tmp_path / "gateway.ready.json"
        self.audit_file = tmp_path / "audit.jsonl"
        self.log_file = tmp_path / "gateway.log"
        self.env = {
            **os.environ,
            "TENSORWASM_GATEWAY_PROCESSES": "2",
            "TENSORWASM_GATEWAY_DATABASE_URL": database_url,
            "TENSORWASM_GATEWAY_LISTEN_ADDRESS": "127.0.0.1:0",
            "TENSORWASM_GATEWAY_METRICS_ADDRESS": "127.0.0.1:0",
            "TENSORWASM_GATEWAY_HTTP_ADDRESS": "127.0.0.1:0",
            "TENSORWASM_GATEWAY_READY_FILE": str(self.ready_file),
            "TENSORWASM_GATEWAY_EXECUTOR_ADDRESSES": "127.0.0.1:1",
            "TENSORWASM_GATEWAY_SNAPSHOT_ADDRESS": "127.0.0.1:1",
            "TENSORWASM_GATEWAY_TOKENS": f"{TOKEN}:tenant=*",
            "TENSORWASM_GATEWAY_RATE_LIMIT_TENANT_QPS": "0.001",  # no refill in a test
            "TENSORWASM_GATEWAY_RATE_LIMIT_TENANT_BURST": str(BURST),
            "TENSORWASM_GATEWAY_AUDIT_LOG": f"file:{self.audit_file}",
            "TENSORWASM_DATA_DIR": str(tmp_path / "data"),
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tensorwasm_gateway"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        try:
            wait_for(self._started, "the gateway's ready file")
        except BaseException:
            self.stop()
            raise

    def _started(self) -> bool:
        assert self.process.poll() is None, self.log_file.read_text()[-4000:]
        return self.ready_file.exists()

    @property
    def ready(self) -> dict[str, Any]:
        return dict(json.loads(self.ready_file.read_text()))

    def worker_pids(self) -> list[int]:
        return [int(w["pid"]) for w in self.ready["workers"]]

    def stop(self) -> None:
        """SIGTERM (the workers drain, the supervisor removes its run directory), then
        SIGKILL to whatever of its process group (its own session) is left."""
        workers: list[int] = []
        with contextlib.suppress(OSError, ValueError, KeyError):
            workers = self.worker_pids()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(DEADLINE_SECONDS)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(60)
        for pid in workers:
            wait_for(lambda pid=pid: gone(pid), f"worker {pid} stopped")  # type: ignore[misc]


@pytest.fixture
def gateway(tmp_path: Path, postgres_url: str) -> Iterator[Gateway]:
    running = Gateway(tmp_path, postgres_url)
    try:
        yield running
    finally:
        running.stop()


def delete_missing(address: str, tenant: str, token: str = TOKEN) -> str:
    """DeleteFunction of a missing function over a connection of its own: the ErrorInfo
    reason (FUNCTION_NOT_FOUND when served and admitted, RATE_LIMITED when refused)."""
    options = [("grpc.use_local_subchannel_pool", 1)]  # a TCP connection per channel
    with grpc.insecure_channel(address, options=options) as channel:
        try:
            pb_grpc.GatewayServiceStub(channel).DeleteFunction(
                pb.DeleteFunctionRequest(name="functions/missing"),
                metadata=(("authorization", f"Bearer {token}"), ("x-tensorwasm-tenant", tenant)),
                timeout=60,
            )
        except grpc.RpcError as exc:
            return reason_of(exc)
    return "OK"


def reason_of(exc: grpc.RpcError) -> str:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(exc)
    assert status is not None, exc
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    raise AssertionError(f"no ErrorInfo in {status}")


def calls_served(metrics_address: str) -> int:
    """The DeleteFunction calls one worker answered, from its own /metrics."""
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("tensorwasm_grpc_server_requests_total{") and METHOD in line:
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def served_by_worker(gateway: Gateway) -> dict[int, int]:
    return {
        int(w["pid"]): calls_served(str(w["metrics_address"])) for w in gateway.ready["workers"]
    }


def gateway_metrics(gateway: Gateway) -> dict[str, dict[str, float]]:
    """The gateway's own /metrics (the supervisor's, over every worker's): per worker
    index, DeleteFunction calls served and `up`; and the restarts counter ("" key)."""
    address = gateway.ready["metrics_address"]
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as reply:
        text = reply.read().decode()
    seen: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            worker = sample.labels.get("worker", "")
            if sample.name == "tensorwasm_grpc_server_requests_total":
                if sample.labels["method"].endswith(METHOD):
                    served = seen.setdefault(worker, {})
                    served["served"] = served.get("served", 0) + sample.value
            elif sample.name == "tensorwasm_gateway_worker_up":
                seen.setdefault(worker, {})["up"] = sample.value
            elif sample.name == "tensorwasm_gateway_worker_restarts_total":
                seen.setdefault("", {})["restarts"] = sample.value
    return seen


@pytest.mark.timeout(600)
def test_two_workers_share_the_port_the_rate_limit_and_the_audit_file(gateway: Gateway) -> None:
    address = gateway.ready["grpc_address"]
    assert len(set(gateway.worker_pids())) == 2
    assert gateway.process.pid not in gateway.worker_pids()

    # (a) separate connections are spread over both workers, each with its own tenant
    # (a full bucket each): every call is served
    assert [delete_missing(address, f"spread-{i}") for i in range(CALLS)] == [
        "FUNCTION_NOT_FOUND"
    ] * CALLS
    spread = served_by_worker(gateway)
    assert sum(spread.values()) == CALLS
    assert all(count > 0 for count in spread.values()), spread
    # the gateway's one /metrics shows both workers' series, each labelled with its worker
    metrics = gateway_metrics(gateway)
    by_index = {int(w["index"]): int(w["pid"]) for w in gateway.ready["workers"]}
    assert {str(i): spread[pid] for i, pid in by_index.items()} == {
        worker: seen["served"] for worker, seen in metrics.items() if worker
    }
    assert [metrics[str(i)]["up"] for i in sorted(by_index)] == [1, 1]
    assert metrics[""]["restarts"] == 0

    # (b) one tenant's bucket holds BURST calls in total, though each worker alone saw
    # more than BURST calls of it (per-process buckets would admit about 2 x BURST)
    outcomes = [delete_missing(address, "limited") for _ in range(CALLS)]
    admitted = outcomes.count("FUNCTION_NOT_FOUND")
    assert outcomes.count("RATE_LIMITED") + admitted == CALLS, outcomes
    assert 1 <= admitted <= BURST, outcomes
    limited = served_by_worker(gateway)
    assert all(limited[pid] - spread[pid] > BURST for pid in limited), (spread, limited)

    # the HTTP face shares its port too, and its loopback calls reach any worker's guard
    http_host, http_port = gateway.ready["http_address"].rsplit(":", 1)
    for i in range(8):
        connection = http.client.HTTPConnection(http_host, int(http_port), timeout=60)
        connection.request(
            "DELETE",
            "/functions/missing",
            headers={"authorization": f"Bearer {TOKEN}", "x-tensorwasm-tenant": f"http-{i}"},
        )
        assert connection.getresponse().status == 404
        connection.close()

    # the audit file both workers appended to: one whole JSON record per line
    lines = gateway.audit_file.read_bytes().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 2 * CALLS + 8
    assert {r["tenant"] for r in records} >= {"limited", "spread-0", "http-0"}


@pytest.mark.timeout(600)
def test_a_killed_worker_is_restarted_while_the_other_serves_and_sigterm_stops_all(
    gateway: Gateway,
) -> None:
    address = gateway.ready["grpc_address"]
    killed, survivor = gateway.worker_pids()
    os.kill(killed, signal.SIGKILL)
    wait_for(lambda: gone(killed), "the killed worker exited")

    # (c) the survivor answers every call meanwhile; the supervisor starts a new worker
    assert [delete_missing(address, f"after-kill-{i}") for i in range(16)] == [
        "FUNCTION_NOT_FOUND"
    ] * 16
    wait_for(
        lambda: len(pids := gateway.worker_pids()) == 2 and killed not in pids,
        "the killed worker was restarted",
    )
    (restarted,) = set(gateway.worker_pids()) - {survivor}
    assert survivor in gateway.worker_pids()
    calls = iter(range(10_000))

    def restarted_served() -> bool:
        assert delete_missing(address, f"after-restart-{next(calls)}") == "FUNCTION_NOT_FOUND"
        return served_by_worker(gateway)[restarted] > 0

    wait_for(restarted_served, "the restarted worker took calls")
    metrics = gateway_metrics(gateway)
    assert metrics[""]["restarts"] == 1
    assert [metrics[w]["up"] for w in ("0", "1")] == [1, 1]

    # (d) SIGTERM to the supervisor: every worker drains and exits, then the supervisor
    workers = gateway.worker_pids()
    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(DEADLINE_SECONDS) == 0
    for pid in workers:
        wait_for(lambda pid=pid: gone(pid), f"worker {pid} stopped")  # type: ignore[misc]


@pytest.mark.timeout(600)
def test_sighup_to_the_supervisor_reloads_the_tokens_in_every_worker(
    tmp_path: Path, postgres_url: str
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}:tenant=*\n")
    later = secrets.token_urlsafe(24)
    gateway = Gateway(
        tmp_path,
        postgres_url,
        {
            "TENSORWASM_GATEWAY_TOKENS": "",
            "TENSORWASM_GATEWAY_TOKENS_FILE": str(tokens),
            "TENSORWASM_GATEWAY_TOKENS_RELOAD_SECONDS": "0",  # only on SIGHUP
        },
    )
    try:
        address = gateway.ready["grpc_address"]
        assert delete_missing(address, "hup-before", later) == "UNAUTHENTICATED"
        tokens.write_text(f"{TOKEN}:tenant=*\n{later}:tenant=*\n")
        before = served_by_worker(gateway)
        gateway.process.send_signal(signal.SIGHUP)
        calls = iter(range(10_000))
        # every worker reloaded: calls over fresh connections (spread over both) all pass
        wait_for(
            lambda: all(
                delete_missing(address, f"hup-{next(calls)}", later) == "FUNCTION_NOT_FOUND"
                for _ in range(8)
            ),
            "the new token is accepted",
        )
        outcomes = [delete_missing(address, f"hup-after-{i}", later) for i in range(CALLS)]
        assert outcomes == ["FUNCTION_NOT_FOUND"] * CALLS
        after = served_by_worker(gateway)
        assert all(after[pid] > before[pid] for pid in after), (before, after)
    finally:
        gateway.stop()


def run_gateway(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tensorwasm_gateway"],
        env={
            **os.environ,
            "TENSORWASM_GATEWAY_METRICS_ADDRESS": "127.0.0.1:0",
            "TENSORWASM_GATEWAY_HTTP_ADDRESS": "",
            "TENSORWASM_DATA_DIR": str(tmp_path),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_several_processes_on_sqlite_are_refused_at_start(tmp_path: Path) -> None:
    result = run_gateway(
        tmp_path,
        {"TENSORWASM_GATEWAY_PROCESSES": "2", "TENSORWASM_GATEWAY_LISTEN_ADDRESS": "127.0.0.1:0"},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "TENSORWASM_GATEWAY_PROCESSES" in result.stderr
    assert "PostgreSQL" in result.stderr


def test_a_port_held_by_another_program_stops_the_gateway(tmp_path: Path) -> None:
    with contextlib.closing(socket.create_server(("127.0.0.1", 0))) as holder:
        port = holder.getsockname()[1]
        result = run_gateway(
            tmp_path,
            {
                "TENSORWASM_GATEWAY_PROCESSES": "2",
                # parsed only: the port is refused before the database is opened
                "TENSORWASM_GATEWAY_DATABASE_URL": "postgresql://u:p@127.0.0.1:1/none",
                "TENSORWASM_GATEWAY_LISTEN_ADDRESS": f"127.0.0.1:{port}",
            },
        )
    assert result.returncode == 1, result.stderr[-3000:]
    assert f"cannot listen on 127.0.0.1:{port} (listen_address)" in result.stderr


def test_a_worker_that_cannot_start_stops_the_whole_gateway(tmp_path: Path) -> None:
    result = run_gateway(
        tmp_path,
        {
            "TENSORWASM_GATEWAY_PROCESSES": "2",
            "TENSORWASM_GATEWAY_DATABASE_URL": "postgresql://u:p@127.0.0.1:1/none",
            "TENSORWASM_GATEWAY_LISTEN_ADDRESS": "127.0.0.1:0",
            "TENSORWASM_GATEWAY_READY_FILE": str(tmp_path / "ready.json"),
        },
    )
    # the workers' own refusal (their database), then the supervisor's, status 2
    assert result.returncode == 2, result.stderr[-3000:]
    assert "TENSORWASM_GATEWAY_DATABASE_URL" in result.stderr
    assert "exited with status 2 while starting" in result.stderr
    assert not (tmp_path / "ready.json").exists()
