"""Several gateway worker processes on one port (`TENSORWASM_GATEWAY_PROCESSES` > 1).

The gateway's main process becomes a small supervisor: it reserves the gRPC port (and the
HTTP face's and the health port, when set) with SO_REUSEPORT, holding a bound socket that
never listens (an ephemeral port `:0` becomes one concrete port for every worker), then
starts the workers (multiprocessing, `spawn`), each a whole gateway (`server.serve`) that
binds those ports with SO_REUSEPORT too, so the kernel spreads the connections among them.

- Ready: the supervisor writes its ready file (the one launchers wait on) once every
  worker wrote its own, i.e. every worker serves; it names the supervisor's pid, the
  shared addresses (the HTTP face's as `http_address`), its own metrics address and
  every worker's pid and metrics address (`workers`), and is rewritten when a restarted
  worker serves.
- A worker that exits before the gateway was ready (it cannot bind, its database is
  unreachable, ...) stops the whole gateway: the others are stopped and the supervisor
  exits with that worker's status (1 when it died of a signal).
- A worker that dies later is restarted after a backoff (BACKOFF_FIRST_SECONDS, doubled
  for each quick death in a row, at most BACKOFF_MAX_SECONDS); the others keep serving.
- SIGTERM or SIGINT: SIGTERM to every worker, which drains as a single gateway does;
  SIGKILL to one still there after the shutdown grace plus STOP_MARGIN_SECONDS. SIGHUP
  (reload the tokens file) is passed on to every worker.
- A worker dies with the supervisor (PR_SET_PDEATHSIG), so a killed supervisor leaves no
  worker holding the port.

Each worker is a replica of its own as far as shared state goes: its own gateway id and
lease for async invocations; the rate limits shared through the PostgreSQL database (the
settings refuse several processes on SQLite); the concurrency caps divided among the
workers (server.per_worker_cap); its own /metrics on a private loopback port, which the
supervisor's endpoint on the configured metrics address reads at every scrape and serves
with every other worker's, labelled by worker (worker_metrics.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from tensorwasm_common.settings import split_address

from tensorwasm_gateway.settings import GatewaySettings
from tensorwasm_gateway.worker_metrics import WORKER_METRICS_ADDRESS, WorkerMetrics

_log = logging.getLogger(__name__)

BACKOFF_FIRST_SECONDS = 0.25
BACKOFF_MAX_SECONDS = 10.0
# A worker that served this long before dying starts its backoff afresh.
STABLE_SECONDS = 30.0
STOP_MARGIN_SECONDS = 10.0
POLL_SECONDS = 0.05
_PR_SET_PDEATHSIG = 1


class BindError(RuntimeError):
    """An address the workers would share cannot be bound."""


@dataclasses.dataclass
class _Worker:
    """One worker slot: its process (None while waiting to restart) and what it wrote."""

    index: int
    ready_file: Path
    process: BaseProcess | None = None
    started: float = 0.0
    ready: dict[str, Any] | None = None
    quick_deaths: int = 0
    restart_at: float | None = None


def reserve(address: str, name: str) -> tuple[socket.socket, str]:
    """Binds `address` with SO_REUSEPORT (never listening: it takes no connections) and
    returns the socket, which holds the port, and the address with its concrete port.

    Raises:
        BindError: the address cannot be bound (in use by a process without SO_REUSEPORT,
            or not an address of this host).
    """
    host, port = split_address(address)
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise BindError(f"cannot listen on {address} ({name}): {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot listen on {address} ({name}): {exc}") from None
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return sock, f"{shown}:{bound_port}"


def worker_main(settings: GatewaySettings, face_secret: str, supervisor_pid: int) -> None:
    """A worker process's body (the `spawn` target): dies with the supervisor, then
    serves as a whole gateway until SIGTERM."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor_pid:  # the supervisor died before the line above
        return
    from tensorwasm_common.bootstrap import bootstrap, run_on_loop

    from tensorwasm_gateway.server import serve

    bootstrap("gateway", settings)
    run_on_loop(serve(settings, face_secret=face_secret), settings.event_loop)


class Supervisor:
    """Starts, watches, restarts and stops the workers (see the module docstring)."""

    def __init__(self, settings: GatewaySettings, workers: int) -> None:
        self._settings = settings
        self._count = workers
        self._context = multiprocessing.get_context("spawn")
        self._run_dir = Path(tempfile.mkdtemp(prefix="tensorwasm-gateway-workers-"))
        self._held: list[socket.socket] = []
        self._worker_settings: list[GatewaySettings] = []
        self._face_secret = secrets.token_urlsafe(32) if settings.http_address else ""
        self._workers = [
            _Worker(index, self._run_dir / f"worker-{index}.ready.json") for index in range(workers)
        ]
        self._http_address = ""
        self._stopping: int | None = None
        self._hangups = 0
        self._metrics: WorkerMetrics | None = None
        self._restarts = 0

    def run(self) -> int:
        """Serves until SIGTERM/SIGINT; returns the process's exit status."""
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        try:
            try:
                self._prepare()
            except BindError as exc:
                _log.error("gateway workers cannot start: %s", exc)
                print(f"tensorwasm-gateway: {exc}", file=sys.stderr)
                return 1
            return self._supervise()
        finally:
            self._stop_all()
            if self._metrics is not None:
                self._metrics.close()
            for sock in self._held:
                sock.close()
            shutil.rmtree(self._run_dir, ignore_errors=True)
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self._hangups += 1
        elif self._stopping is None:
            self._stopping = signum

    def _prepare(self) -> None:
        """Reserves the shared addresses and makes each worker's settings."""
        settings = self._settings
        listen_address = self._reserve(settings.listen_address, "listen_address")
        http_address = self._reserve(settings.http_address, "http_address")
        self._http_address = http_address
        health_address = self._reserve(settings.health_address, "health_address")
        if settings.metrics_address:
            self._metrics = self._serve_metrics(settings.metrics_address)
        for worker in self._workers:
            self._worker_settings.append(
                dataclasses.replace(
                    settings,
                    listen_address=listen_address,
                    http_address=http_address,
                    health_address=health_address,
                    # each its own on loopback; the supervisor serves them all together
                    metrics_address=WORKER_METRICS_ADDRESS if settings.metrics_address else "",
                    ready_file=worker.ready_file,
                )
            )

    def _serve_metrics(self, address: str) -> WorkerMetrics:
        """Starts the gateway's /metrics: every worker's series, labelled by worker."""
        try:
            metrics = WorkerMetrics(
                address,
                workers=lambda: [  # read once each: the supervisor may reset it meanwhile
                    (w.index, str(ready["metrics_address"]))
                    for w in self._workers
                    if (ready := w.ready) is not None
                ],
                expected=lambda: [w.index for w in self._workers],
                restarts=lambda: self._restarts,
            )
        except OSError as exc:
            raise BindError(f"cannot listen on {address} (metrics_address): {exc}") from None
        metrics.start()
        return metrics

    def _reserve(self, address: str, name: str) -> str:
        """The address with its concrete port, held (empty: not served)."""
        if not address:
            return ""
        sock, bound = reserve(address, name)
        self._held.append(sock)
        return bound

    def _supervise(self) -> int:
        for worker in self._workers:
            self._start(worker)
        status = self._await_all_ready()
        if status is not None or self._stopping is not None:
            return status or 0
        self._write_ready_file()
        _log.info(
            "gateway workers serving",
            extra={
                "worker_pids": [w.process.pid for w in self._workers if w.process is not None],
                "pid": os.getpid(),
            },
        )
        while self._stopping is None:
            self._pass_on_hangups()
            self._wait_for_change()
            now = time.monotonic()
            for worker in self._workers:
                self._tend(worker, now)
        _log.info("stopping gateway workers", extra={"signal": self._stopping})
        return 0

    def _await_all_ready(self) -> int | None:
        """Waits until every worker serves; a worker that exits first stops the gateway
        (returns the exit status). None once all serve, or on a stop signal."""
        while self._stopping is None:
            self._pass_on_hangups()
            for worker in self._workers:
                process = worker.process
                assert process is not None
                if worker.ready is None and worker.ready_file.exists():
                    worker.ready = self._read_ready(worker)
                if process.exitcode is not None:
                    code = process.exitcode
                    _log.error(
                        "gateway worker exited while starting; stopping the gateway",
                        extra={"worker": worker.index, "exit_code": code},
                    )
                    print(
                        f"tensorwasm-gateway: worker {worker.index} exited with status "
                        f"{code} while starting (see its log lines above)",
                        file=sys.stderr,
                    )
                    return code if code > 0 else 1
            if all(w.ready is not None for w in self._workers):
                return None
            self._wait_for_change()
        return None

    def _tend(self, worker: _Worker, now: float) -> None:
        """Notices a dead worker (schedules its restart), restarts it when due, and
        notices when a restarted one serves."""
        process = worker.process
        if process is not None and process.exitcode is not None:
            lived = now - worker.started
            worker.quick_deaths = 0 if lived >= STABLE_SECONDS else worker.quick_deaths + 1
            delay = min(
                BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** max(0, worker.quick_deaths - 1)
            )
            _log.warning(
                "gateway worker died; restarting it",
                extra={
                    "worker": worker.index,
                    "pid": process.pid,
                    "exit_code": process.exitcode,
                    "restart_in_seconds": delay,
                },
            )
            process.close()
            worker.process = None
            worker.ready = None
            worker.restart_at = now + delay
        if worker.process is None and worker.restart_at is not None and now >= worker.restart_at:
            worker.restart_at = None
            self._restarts += 1
            self._start(worker)
        if worker.process is not None and worker.ready is None and worker.ready_file.exists():
            worker.ready = self._read_ready(worker)
            _log.info(
                "gateway worker serving again",
                extra={"worker": worker.index, "pid": worker.ready["pid"]},
            )
            self._write_ready_file()

    def _start(self, worker: _Worker) -> None:
        worker.ready_file.unlink(missing_ok=True)
        process = self._context.Process(
            target=worker_main,
            args=(self._worker_settings[worker.index], self._face_secret, os.getpid()),
            name=f"tensorwasm-gateway-worker-{worker.index}",
        )
        process.start()
        worker.process = process
        worker.started = time.monotonic()

    def _wait_for_change(self) -> None:
        sentinels = [w.process.sentinel for w in self._workers if w.process is not None]
        wait(sentinels, timeout=POLL_SECONDS)

    def _pass_on_hangups(self) -> None:
        while self._hangups:
            self._hangups -= 1
            self._signal_all(signal.SIGHUP)

    def _signal_all(self, signum: int) -> None:
        for worker in self._workers:
            process = worker.process
            if process is not None and process.pid is not None and process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)

    def _stop_all(self) -> None:
        """SIGTERM to every worker, SIGKILL to one that outlives the grace period."""
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self._settings.shutdown_grace_seconds + STOP_MARGIN_SECONDS
        for worker in self._workers:
            process = worker.process
            if process is None:
                continue
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                _log.warning("gateway worker outlived the grace period; killing it")
                process.kill()
                process.join()
            process.close()
            worker.process = None

    def _read_ready(self, worker: _Worker) -> dict[str, Any]:
        raw = json.loads(worker.ready_file.read_text())
        return {
            "index": worker.index,
            "pid": raw["pid"],
            "grpc_address": raw["grpc_address"],
            "metrics_address": raw["metrics_address"],
            "health_address": raw["health_address"],
        }

    def _write_ready_file(self) -> None:
        """The supervisor's ready file, in the format of a single gateway's plus `workers`."""
        path = self._settings.ready_file
        if path is None:
            return
        workers = [w.ready for w in self._workers if w.ready is not None]
        first = workers[0]
        payload = {
            "service": "gateway",
            "pid": os.getpid(),
            "grpc_address": first["grpc_address"],
            "metrics_address": self._metrics.address if self._metrics is not None else "",
            "health_address": first["health_address"],
            "http_address": self._http_address,
            "workers": [
                {"index": w["index"], "pid": w["pid"], "metrics_address": w["metrics_address"]}
                for w in workers
            ],
        }
        temp = path.with_suffix(path.suffix + ".tmp")
        temp.write_text(json.dumps(payload))
        os.replace(temp, path)


def supervise(settings: GatewaySettings) -> int:
    """Runs `settings.worker_count` gateway workers until SIGTERM; the exit status."""
    return Supervisor(settings, settings.worker_count).run()
