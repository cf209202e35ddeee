"""The local stack: the five services as separate processes on loopback, one data directory.

Each service keeps its port for the stack's life: a service started again (after a crash,
`kill` or `stop_service`) listens on the port it had, so the others, which were given that
address once at their start, reconnect to it. With ephemeral ports each service's port is
picked by the system at its first start, recorded, and reused.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorwasm.common.v1.service_token import with_service_token

from tensorwasm_client.client import TlsOptions
from tensorwasm_client.local_certs import stack_tls_env

# Start order: every service starts after the ones it calls.
SERVICES = ("snapshot", "jit", "dispatcher", "executor", "gateway")
DEFAULT_PORTS = {
    "gateway": 50051,
    "executor": 50052,
    "dispatcher": 50053,
    "snapshot": 50054,
    "jit": 50055,
}
STATE_FILE = "stack.json"
# The local CA and certificates of a stack started with TLS (`tensorwasm up --tls`).
TLS_DIR = "tls"
# The fleet's service token (see tensorwasm_common.service_auth), made at the first start.
SERVICE_TOKEN_FILE = "service-token"  # noqa: S105 (a file name)


class StackError(RuntimeError):
    """The stack could not be started, found or stopped."""


@dataclass(frozen=True)
class ServiceProcess:
    """One running service."""

    name: str
    pid: int
    grpc_address: str
    metrics_address: str
    log_path: str
    http_address: str = ""  # the gateway's HTTP/JSON face


def default_data_dir() -> Path:
    """`$XDG_DATA_HOME/tensorwasm`, else `~/.local/share/tensorwasm`."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "tensorwasm"


class LocalStack:
    """Starts, inspects and stops the local stack kept in `data_dir`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        ephemeral_ports: bool = False,
        extra_env: dict[str, str] | None = None,
        executor_replicas: int = 1,
        tls: bool = False,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self._tls = tls
        self._host = host
        self._ephemeral = ephemeral_ports
        self._extra_env = dict(extra_env or {})
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        # replicas after the first are named executor-2, executor-3, ...
        self._names = [
            *SERVICES[:-1],
            *(f"executor-{i}" for i in range(2, executor_replicas + 1)),
            SERVICES[-1],
        ]

    @property
    def state_path(self) -> Path:
        """Where the running stack's pids and addresses are recorded."""
        return self.data_dir / STATE_FILE

    @property
    def service_token_path(self) -> Path:
        """The file of the token the stack's services require of each other (mode 0600)."""
        return self.data_dir / SERVICE_TOKEN_FILE

    def service_token(self) -> str:
        """The stack's service token (for calls straight to an internal service)."""
        return stack_service_token(self.data_dir) or ""

    def internal_channel(self, name: str, **options: object) -> grpc.Channel:
        """A blocking channel to one of the stack's internal services that sends the
        service token on every call (the caller closes it)."""
        address = self.services()[name].grpc_address
        credentials = stack_tls(self.data_dir)
        channel = (
            grpc.insecure_channel(address, options=list(options.items()) or None)
            if credentials is None
            else grpc.secure_channel(
                address, credentials.credentials(), options=list(options.items()) or None
            )
        )
        return with_service_token(channel, self.service_token())

    def _ensure_service_token(self) -> None:
        """Creates the token file once (random, 0600); later starts reuse it."""
        path = self.service_token_path
        if path.exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
            out.flush()
            os.fsync(out.fileno())

    def start(self, timeout_seconds: float = 60.0) -> dict[str, ServiceProcess]:
        """Starts every service, waiting until each one's health check says SERVING."""
        if self.running():
            raise StackError(f"a stack is already running from {self.data_dir}; stop it first")
        for sub in ("run", "logs"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        self._ensure_service_token()
        self._prepare_tls()
        started: dict[str, ServiceProcess] = {}
        try:
            for name in self._names:
                started[name] = self._start_one(name, started, timeout_seconds)
                self._write_state(started)
        except BaseException:
            self._write_state(started)
            self.stop()
            raise
        return started

    def _prepare_tls(self) -> None:
        """With `tls`: a fresh local CA and certificates under `<data dir>/tls` and the
        settings that turn on mTLS on every hop; without: no TLS directory (its presence
        tells `status` and the probes that the stack speaks TLS)."""
        directory = self.data_dir / TLS_DIR
        shutil.rmtree(directory, ignore_errors=True)
        if self._tls:
            kinds = dict.fromkeys(_kind(name) for name in self._names)
            self._extra_env.update(stack_tls_env(directory, kinds, self._host))

    def _service_env(
        self,
        name: str,
        started: dict[str, ServiceProcess],
        previous: ServiceProcess | None = None,
    ) -> dict[str, str]:
        replica, name = name, _kind(name)
        prefix = f"TENSORWASM_{name.upper()}_"
        if previous is not None:  # started again: the address the others know
            port = _port_of(previous.grpc_address)
        else:
            port = 0 if self._ephemeral or replica != name else DEFAULT_PORTS[name]
        env = {
            **os.environ,
            **self._extra_env,
            prefix + "LISTEN_ADDRESS": f"{self._host}:{port}",
            prefix + "METRICS_ADDRESS": f"{self._host}:0",
            prefix + "READY_FILE": str(self.data_dir / "run" / f"{replica}.ready.json"),
            prefix + "SERVICE_TOKEN_FILE": str(self.service_token_path),
            "OTEL_SERVICE_NAME": f"tensorwasm-{replica}",
            "PYTHONUNBUFFERED": "1",
        }
        if (
            "jsonl" in env.get("OTEL_TRACES_EXPORTER", "")
            and "TENSORWASM_TRACES_JSONL_PATH" not in self._extra_env
        ):
            env["TENSORWASM_TRACES_JSONL_PATH"] = str(self.data_dir / "traces" / f"{replica}.jsonl")
        if name == "snapshot":
            env[prefix + "DATA_DIR"] = str(self.data_dir / "snapshot")
        if name == "jit":  # emitted kernels and shared cubins persist with the stack
            env.setdefault(prefix + "DATA_DIR", str(self.data_dir / "jit"))
        if name == "executor":  # read-only directories granted as <data dir>/guest-dirs/<tenant>/
            env.setdefault(prefix + "GUEST_DIRS_ROOT", str(self.data_dir / "guest-dirs"))
            artifacts = self.data_dir / replica / "artifacts"
            env.setdefault(prefix + "ARTIFACT_DIR", str(artifacts))
            env.setdefault(prefix + "IMAGE_DIR", str(self.data_dir / replica / "images"))
        if name in ("executor", "gateway"):
            env[prefix + "SNAPSHOT_ADDRESS"] = started["snapshot"].grpc_address
        if name == "executor" and "dispatcher" in started:  # guests' wasi:cuda calls go there
            env[prefix + "DISPATCHER_ADDRESS"] = started["dispatcher"].grpc_address
        if name in ("executor", "dispatcher") and "jit" in started:
            # the executor's tensorwasm:gpu kernels; the dispatcher's shared cubins
            env[prefix + "JIT_ADDRESS"] = started["jit"].grpc_address
        if name == "gateway":
            env[prefix + "EXECUTOR_ADDRESSES"] = ",".join(
                s.grpc_address for n, s in started.items() if _kind(n) == "executor"
            )
            env[prefix + "HTTP_ADDRESS"] = (
                previous.http_address
                if previous is not None and previous.http_address
                else f"{self._host}:{self._http_port()}"
            )
            env[prefix + "DATABASE_PATH"] = str(self.data_dir / "gateway" / "registry.sqlite3")
        return env

    def _start_one(
        self,
        name: str,
        started: dict[str, ServiceProcess],
        timeout_seconds: float,
        previous: ServiceProcess | None = None,
    ) -> ServiceProcess:
        ready_file = self.data_dir / "run" / f"{name}.ready.json"
        env = self._service_env(name, started, previous)
        ready_file.unlink(missing_ok=True)
        log_path = self.data_dir / "logs" / f"{name}.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", f"tensorwasm_{_kind(name)}"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self._children[process.pid] = process
        deadline = time.monotonic() + timeout_seconds
        while not ready_file.exists():
            if process.poll() is not None:
                raise StackError(f"{name} exited with {process.returncode}:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise StackError(f"{name} did not start in {timeout_seconds}s:\n{_tail(log_path)}")
            time.sleep(0.05)
        ready = json.loads(ready_file.read_text())
        service = ServiceProcess(
            name,
            process.pid,
            ready["grpc_address"],
            ready["metrics_address"],
            str(log_path),
            env.get("TENSORWASM_GATEWAY_HTTP_ADDRESS", "") if name == "gateway" else "",
        )
        while health(service.grpc_address, tls=stack_tls(self.data_dir)) != "SERVING":
            if process.poll() is not None or time.monotonic() > deadline:
                raise StackError(f"{name} never reported SERVING:\n{_tail(log_path)}")
            time.sleep(0.1)
        return service

    def _http_port(self) -> int:
        """The gateway's HTTP port: 8080, or a free one with ephemeral ports."""
        if not self._ephemeral:
            return 8080
        with socket.socket() as probe:  # free now; the gateway binds it right after
            probe.bind((self._host, 0))
            return int(probe.getsockname()[1])

    def _write_state(self, services: dict[str, ServiceProcess]) -> None:
        temp = self.state_path.with_suffix(".tmp")
        temp.write_text(json.dumps({n: asdict(s) for n, s in services.items()}, indent=2))
        os.replace(temp, self.state_path)

    def services(self) -> dict[str, ServiceProcess]:
        """The recorded services (running or not)."""
        if not self.state_path.exists():
            return {}
        raw = json.loads(self.state_path.read_text())
        return {name: ServiceProcess(**fields) for name, fields in raw.items()}

    def running(self) -> bool:
        """True when any recorded service process is still alive."""
        return any(_alive(s) for s in self.services().values())

    def stop(self, grace_seconds: float = 15.0) -> list[str]:
        """SIGTERM in reverse start order, SIGKILL what outlives the grace period."""
        services = self.services()
        order = sorted(services.values(), key=lambda s: SERVICES.index(_kind(s.name)), reverse=True)
        stopped = []
        for service in order:
            if not _alive(service):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(service.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_seconds
            while self._still_running(service) and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._still_running(service):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(service.pid, signal.SIGKILL)
                while self._still_running(service):
                    time.sleep(0.05)
            stopped.append(service.name)
        self.state_path.unlink(missing_ok=True)
        return stopped

    def start_service(self, name: str, timeout_seconds: float = 60.0) -> ServiceProcess:
        """Starts one recorded service again (after `kill`, `stop_service` or a crash) on
        the port it had, with the addresses of the others; returns it (its metrics
        address and pid are new).

        Raises:
            StackError: the service is unknown, still running, or could not start (its old
                port taken by another process meanwhile, for one).
        """
        services = self.services()
        if name not in services:
            raise StackError(f"{name} is not part of the stack in {self.data_dir}")
        if _alive(services[name]):
            raise StackError(f"{name} is still running")
        self._ensure_service_token()
        service = self._start_one(name, services, timeout_seconds, previous=services[name])
        services[name] = service
        self._write_state(services)
        return service

    def stop_service(self, name: str, grace_seconds: float = 15.0) -> None:
        """Stops one service (SIGTERM, SIGKILL past the grace period); the stack keeps its
        record, so `start_service` brings it back on the same port."""
        service = self.services()[name]
        with contextlib.suppress(ProcessLookupError):
            os.kill(service.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while self._still_running(service) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._still_running(service):
            self.kill(name)

    def restart_service(self, name: str, timeout_seconds: float = 60.0) -> ServiceProcess:
        """Stops one service and starts it again on the same port."""
        self.stop_service(name)
        return self.start_service(name, timeout_seconds)

    def kill(self, name: str) -> None:
        """SIGKILLs one service (for crash tests) and reaps it."""
        service = self.services()[name]
        os.kill(service.pid, signal.SIGKILL)
        while self._still_running(service):
            time.sleep(0.02)

    def _still_running(self, service: ServiceProcess) -> bool:
        child = self._children.get(service.pid)
        if child is not None:
            return child.poll() is None
        return _alive(service)


def stack_service_token(data_dir: Path) -> str | None:
    """The service token of the stack kept in `data_dir`, or None when it has none."""
    try:
        return (data_dir / SERVICE_TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


def _port_of(address: str) -> int:
    """The port of a recorded `host:port` (or `[v6]:port`)."""
    return int(address.rpartition(":")[2])


def _kind(name: str) -> str:
    """The service of a process name: `executor-2` is an executor."""
    return name.split("-", 1)[0]


def stack_tls(data_dir: Path) -> TlsOptions | None:
    """The client TLS of a stack started with TLS (its CA and the CLI's certificate), or
    None for a plaintext one."""
    directory = data_dir / TLS_DIR
    if not (directory / "ca.pem").exists():
        return None
    return TlsOptions(directory / "ca.pem", directory / "client.pem", directory / "client.key")


def health(address: str, timeout_seconds: float = 1.0, *, tls: TlsOptions | None = None) -> str:
    """The server's overall health: SERVING, NOT_SERVING, ... or UNREACHABLE."""
    channel = (
        grpc.insecure_channel(address)
        if tls is None
        else grpc.secure_channel(address, tls.credentials())
    )
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_seconds
            )
        except grpc.RpcError:
            return "UNREACHABLE"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def _alive(service: ServiceProcess) -> bool:
    try:
        cmdline = Path(f"/proc/{service.pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{service.pid}/stat").read_text()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return not zombie and f"tensorwasm_{_kind(service.name)}".encode() in cmdline


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
