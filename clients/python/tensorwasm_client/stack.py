"""The local stack: the five services as separate processes on loopback, one data directory.

Where each service listens (`StackAddresses`): gRPC on the port base plus the service's
offset (gateway +0, executor +1, dispatcher +2, snapshot +3, jit +4), Prometheus metrics
on the port base + 10 + the same offset, the gateway's HTTP face on 8080 for the default
port base and on the port base + 20 for any other. A `TENSORWASM_<SVC>_LISTEN_ADDRESS`,
`_METRICS_ADDRESS` or `TENSORWASM_GATEWAY_HTTP_ADDRESS` in the environment is used as it
is; an explicit per-service port (`up --gateway-port`) wins over both. Every fixed port is
checked before anything starts, and a taken one is named in one line.

Each service keeps its ports for the stack's life: a service started again (after a crash,
`kill`, `stop_service` or `tensorwasm restart`) listens where it did, so the others, which
were given that address once at their start, reconnect to it. With ephemeral ports each
service's port is picked by the system at its first start, recorded, and reused.
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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorwasm.common.v1.service_token import with_service_token

from tensorwasm_client.client import TlsOptions
from tensorwasm_client.local_certs import stack_tls_env

# Start order: every service starts after the ones it calls.
SERVICES = ("snapshot", "jit", "dispatcher", "executor", "gateway")
DEFAULT_PORT_BASE = 50051
# Each service's gRPC port is the port base plus its offset; metrics add METRICS_OFFSET.
PORT_OFFSETS = {"gateway": 0, "executor": 1, "dispatcher": 2, "snapshot": 3, "jit": 4}
DEFAULT_PORTS = {name: DEFAULT_PORT_BASE + offset for name, offset in PORT_OFFSETS.items()}
METRICS_OFFSET = 10
DEFAULT_HTTP_PORT = 8080
HTTP_OFFSET = 20  # the HTTP face's port for a port base other than the default
STATE_FILE = "stack.json"
# The local CA and certificates of a stack started with TLS (`tensorwasm up --tls`).
TLS_DIR = "tls"
AUDIT_FILE = "gateway.audit.jsonl"  # under logs/: the gateway's audit records
# A service's log (and the audit file) past this size when the service starts is rotated:
# <name>.log -> <name>.log.1 -> ... -> <name>.log.<LOG_KEEP>, the oldest dropped.
LOG_ROTATE_BYTES = 16 << 20
LOG_KEEP = 3
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


@dataclass(frozen=True)
class StackAddresses:
    """Where the local stack's services listen (see the module docstring for the rules).

    `ports` holds explicit gRPC ports by service (they beat the environment); `http_address`
    an explicit HOST:PORT for the gateway's HTTP face ("" for the default, "off" for none).
    """

    host: str = "127.0.0.1"
    port_base: int = DEFAULT_PORT_BASE
    ports: Mapping[str, int] = field(default_factory=dict)
    http_address: str = ""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.ports) - set(PORT_OFFSETS))
        if unknown:
            raise StackError(f"no service named {', '.join(unknown)}")
        top = self.port_base + HTTP_OFFSET
        if not self.port_base >= 1 or top > 65535:
            raise StackError(f"port base {self.port_base}: must be 1 to {65535 - HTTP_OFFSET}")
        for name, port in self.ports.items():
            if not 1 <= port <= 65535:
                raise StackError(f"{name} port {port}: must be 1 to 65535")

    def _at(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{port}"

    def grpc_address(self, service: str) -> str:
        """The service's gRPC HOST:PORT as configured (before the environment)."""
        port = self.ports.get(service, self.port_base + PORT_OFFSETS[service])
        return self._at(port)

    def metrics_address(self, service: str) -> str:
        """The service's Prometheus HOST:PORT."""
        return self._at(self.port_base + METRICS_OFFSET + PORT_OFFSETS[service])

    def default_http_address(self) -> str:
        """The gateway's HTTP face: 8080 with the default port base, else port base + 20."""
        if self.http_address:
            return "" if self.http_address == "off" else self.http_address
        default = self.port_base == DEFAULT_PORT_BASE
        return self._at(DEFAULT_HTTP_PORT if default else self.port_base + HTTP_OFFSET)


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
        gateway_replicas: int = 1,
        snapshot_replicas: int = 1,
        addresses: StackAddresses | None = None,
        tls: bool = False,
    ) -> None:
        if tls and snapshot_replicas > 1:
            raise StackError("store replicas share one multi-address target: not with TLS")
        self.data_dir = data_dir.resolve()
        self._tls = tls
        self.addresses = addresses or StackAddresses(host=host)
        self._host = self.addresses.host
        self._ephemeral = ephemeral_ports
        # WARNING and ERROR lines the services logged while this launcher started them.
        self.start_warnings: list[tuple[str, str]] = []
        self._extra_env = dict(extra_env or {})
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        # replicas after the first are named executor-2, executor-3, ...
        replicas = {"executor": executor_replicas, "gateway": gateway_replicas,
                    "snapshot": snapshot_replicas}  # fmt: skip
        self._names = [
            name if i == 1 else f"{name}-{i}"
            for name in SERVICES
            for i in range(1, replicas.get(name, 1) + 1)
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
        self.check_ports()
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

    def planned_addresses(
        self, name: str, previous: ServiceProcess | None = None
    ) -> dict[str, str]:
        """Where service process `name` will listen: `grpc`, `metrics` and, for the
        gateway, `http` HOST:PORT (port 0: the system picks one)."""
        replica, kind = name, _kind(name)
        environ = {**os.environ, **self._extra_env}
        prefix = f"TENSORWASM_{kind.upper()}_"
        planned: dict[str, str] = {}
        if previous is not None:  # started again: the address the others know
            planned["grpc"] = previous.grpc_address
        elif self._ephemeral or replica != kind:
            planned["grpc"] = self.addresses._at(0)
        elif kind in self.addresses.ports:
            planned["grpc"] = self.addresses.grpc_address(kind)
        else:
            planned["grpc"] = environ.get(
                prefix + "LISTEN_ADDRESS", self.addresses.grpc_address(kind)
            )
        if self._ephemeral or replica != kind:
            planned["metrics"] = self.addresses._at(0)
        elif previous is not None and previous.metrics_address:
            planned["metrics"] = previous.metrics_address
        else:
            planned["metrics"] = environ.get(
                prefix + "METRICS_ADDRESS", self.addresses.metrics_address(kind)
            )
        if kind == "gateway":
            if previous is not None:
                planned["http"] = previous.http_address
            elif self._ephemeral or replica != kind:
                planned["http"] = self.addresses._at(self._http_port())
            elif self.addresses.http_address:
                planned["http"] = self.addresses.default_http_address()
            else:
                planned["http"] = environ.get(
                    prefix + "HTTP_ADDRESS", self.addresses.default_http_address()
                )
        return planned

    def check_ports(self, names: list[str] | None = None) -> None:
        """Fails, naming the first one, when a fixed port the services would take is in
        use (before anything starts: no wait, no traceback)."""
        services = self.services()
        for name in names or self._names:
            for face, address in self.planned_addresses(name, services.get(name)).items():
                if address and _port_of(address) and not port_free(address):
                    raise StackError(
                        f"{address} ({name} {_FACES[face]}) is in use: stop what listens "
                        "there, or start the stack on other ports (tensorwasm up "
                        "--port-base N, --host, --<service>-port N, --http-address)"
                    )

    def _service_env(
        self,
        name: str,
        started: dict[str, ServiceProcess],
        previous: ServiceProcess | None = None,
    ) -> dict[str, str]:
        planned = self.planned_addresses(name, previous)
        replica, name = name, _kind(name)
        prefix = f"TENSORWASM_{name.upper()}_"
        env = {
            **os.environ,
            **self._extra_env,
            prefix + "LISTEN_ADDRESS": planned["grpc"],
            prefix + "METRICS_ADDRESS": planned["metrics"],
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
        if name == "snapshot":  # replicas keep apart what is not in the blob and index URLs
            env[prefix + "DATA_DIR"] = str(self.data_dir / replica)
        if name == "jit":  # emitted kernels and shared cubins persist with the stack
            env.setdefault(prefix + "DATA_DIR", str(self.data_dir / "jit"))
        if name == "executor":  # read-only directories granted as <data dir>/guest-dirs/<tenant>/
            env.setdefault(prefix + "GUEST_DIRS_ROOT", str(self.data_dir / "guest-dirs"))
            artifacts = self.data_dir / replica / "artifacts"
            env.setdefault(prefix + "ARTIFACT_DIR", str(artifacts))
            env.setdefault(prefix + "IMAGE_DIR", str(self.data_dir / replica / "images"))
        if name in ("executor", "gateway"):
            env[prefix + "SNAPSHOT_ADDRESS"] = store_target(started)
        if name == "executor" and "dispatcher" in started:  # guests' wasi:cuda calls go there
            env[prefix + "DISPATCHER_ADDRESS"] = started["dispatcher"].grpc_address
        if name in ("executor", "dispatcher") and "jit" in started:
            # the executor's tensorwasm:gpu kernels; the dispatcher's shared cubins
            env[prefix + "JIT_ADDRESS"] = started["jit"].grpc_address
        if name == "gateway":
            env[prefix + "EXECUTOR_ADDRESSES"] = ",".join(
                s.grpc_address for n, s in started.items() if _kind(n) == "executor"
            )
            env[prefix + "HTTP_ADDRESS"] = planned["http"]
            env[prefix + "DATABASE_PATH"] = str(self.data_dir / "gateway" / "registry.sqlite3")
            # Audit records (their own JSON layout) apart from the log lines.
            audit = AUDIT_FILE if replica == name else f"{replica}.audit.jsonl"
            env.setdefault(prefix + "AUDIT_LOG", f"file:{self.data_dir / 'logs' / audit}")
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
        rotate_log(log_path)
        if name == "gateway":
            rotate_log(self.data_dir / "logs" / AUDIT_FILE)
        elif _kind(name) == "gateway":
            rotate_log(self.data_dir / "logs" / f"{name}.audit.jsonl")
        log_offset = log_path.stat().st_size if log_path.exists() else 0
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
            env.get("TENSORWASM_GATEWAY_HTTP_ADDRESS", "") if _kind(name) == "gateway" else "",
        )
        while health(service.grpc_address, tls=stack_tls(self.data_dir)) != "SERVING":
            if process.poll() is not None or time.monotonic() > deadline:
                raise StackError(f"{name} never reported SERVING:\n{_tail(log_path)}")
            time.sleep(0.1)
        self.start_warnings += [(name, line) for line in _warnings(log_path, log_offset)]
        return service

    def _http_port(self) -> int:
        """A free port for the gateway's HTTP face (ephemeral ports)."""
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

    def alive(self, name: str) -> bool:
        """True when the recorded service process `name` is running."""
        service = self.services().get(name)
        return service is not None and _alive(service)

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
        self.check_ports([name])
        self._ensure_service_token()
        service = self._start_one(name, services, timeout_seconds, previous=services[name])
        services[name] = service
        self._write_state(services)
        return service

    def stop_service(self, name: str, grace_seconds: float = 15.0) -> None:
        """Stops one service (SIGTERM, SIGKILL past the grace period); the stack keeps its
        record, so `start_service` brings it back on the same port. A service that is
        not running (its pid gone or reused by another program) is left alone."""
        service = self.services()[name]
        if not self._still_running(service):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(service.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_seconds
        while self._still_running(service) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._still_running(service):
            self.kill(name)

    def restart_service(self, name: str, timeout_seconds: float = 60.0) -> ServiceProcess:
        """Stops one service (when it still runs) and starts it again on its ports."""
        if name not in self.services():
            raise StackError(f"{name} is not part of the stack in {self.data_dir}")
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
        return _alive(service, exiting=True)


def stack_service_token(data_dir: Path) -> str | None:
    """The service token of the stack kept in `data_dir`, or None when it has none."""
    try:
        return (data_dir / SERVICE_TOKEN_FILE).read_text().strip() or None
    except OSError:
        return None


_FACES = {"grpc": "gRPC", "metrics": "metrics", "http": "HTTP"}


def rotate_log(path: Path, max_bytes: int = LOG_ROTATE_BYTES, keep: int = LOG_KEEP) -> bool:
    """Shifts `path` to `path.1` (and `.1` to `.2`, ..., dropping `.<keep>`) when it is
    larger than `max_bytes`; returns whether it did. Called before a service starts (a
    running service keeps its file open, so it is not rotated under it)."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for index in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{index}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{index + 1}"))
    os.replace(path, path.with_name(f"{path.name}.1"))
    return True


def port_free(address: str) -> bool:
    """True when a server could listen on HOST:PORT now (bound as the services bind)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError:
            return False
    return True


def _warnings(log_path: Path, offset: int) -> list[str]:
    """The messages of the WARNING/ERROR JSON lines written to the log past `offset`."""
    try:
        with log_path.open("rb") as log:
            log.seek(offset)
            lines = log.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("WARNING", "ERROR", "CRITICAL"):
            found.append(str(entry.get("message", "")))
    return found


def store_target(services: Mapping[str, ServiceProcess]) -> str:
    """The snapshot store's address as its clients are given it: the one replica's
    HOST:PORT, or every replica's behind one gRPC target (`ipv4:A,B`; the clients balance
    over them and leave out one that is down)."""
    stores = [s.grpc_address for n, s in services.items() if _kind(n) == "snapshot"]
    return stores[0] if len(stores) == 1 else "ipv4:" + ",".join(stores)


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


def _alive(service: ServiceProcess, *, exiting: bool = False) -> bool:
    """True while the service's process runs. With `exiting`, also while it is on its way
    out: its memory (and so its cmdline) is released before its sockets are closed, and
    its main thread can be a zombie while other threads still exit (the sockets close with
    the last one), so a port is free only once the process is gone, or a zombie with no
    other thread left."""
    try:
        cmdline = Path(f"/proc/{service.pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{service.pid}/stat").read_text()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    if zombie:
        return exiting and _other_threads(service.pid)
    return f"tensorwasm_{_kind(service.name)}".encode() in cmdline or (exiting and not cmdline)


def _other_threads(pid: int) -> bool:
    """True while a thread other than the main one of process `pid` still exists."""
    try:
        return any(task != str(pid) for task in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
