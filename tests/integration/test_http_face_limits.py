"""The HTTP face's connection bounds in a real gateway process: sockets that connect and
send nothing cannot use up the descriptors its gRPC server needs, and HTTP serves again
once they close or time out."""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.integration
MAX_CONNECTIONS = 16
# Descriptors the gateway process may hold: its own needs, the cap and one accept batch
# fit; the raw sockets below do not.
DESCRIPTOR_LIMIT = 256
RAW_SOCKETS = 600
# Connected (from the client's side) before gRPC is checked: more than the process could
# hold with its listen queue full, so the server must have accepted and let go of some.
CONNECTED_BEFORE_CHECK = 500
LIMITED_GATEWAY = (
    "import resource, runpy; "
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({DESCRIPTOR_LIMIT}, {DESCRIPTOR_LIMIT})); "
    "runpy.run_module('tensorwasm_gateway', run_name='__main__')"
)


def free_port() -> int:
    with socket.socket() as probe:  # free now; the gateway binds it right after
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(predicate: Callable[[], bool], seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


@contextlib.contextmanager
def gateway(tmp_path: Path, http_port: int) -> Iterator[str]:
    """A gateway process (no executor or store behind it: it answers, NOT_SERVING) with
    few descriptors; yields its gRPC address."""
    ready = tmp_path / "ready.json"
    env = {
        **os.environ,
        "TENSORWASM_GATEWAY_LISTEN_ADDRESS": "127.0.0.1:0",
        "TENSORWASM_GATEWAY_METRICS_ADDRESS": "",
        "TENSORWASM_GATEWAY_HTTP_ADDRESS": f"127.0.0.1:{http_port}",
        "TENSORWASM_GATEWAY_HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
        "TENSORWASM_GATEWAY_HTTP_IDLE_TIMEOUT_SECONDS": "1",
        "TENSORWASM_GATEWAY_HTTP_READ_TIMEOUT_SECONDS": "1",
        "TENSORWASM_GATEWAY_READY_FILE": str(ready),
        "TENSORWASM_GATEWAY_DATABASE_PATH": str(tmp_path / "registry.sqlite3"),
        "TENSORWASM_GATEWAY_EXECUTOR_ADDRESSES": "127.0.0.1:1",
        "TENSORWASM_GATEWAY_SNAPSHOT_ADDRESS": "127.0.0.1:1",
        "TENSORWASM_GATEWAY_AUDIT_LOG": "none",
    }
    log = tmp_path / "gateway.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-c", LIMITED_GATEWAY],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
        )
    try:
        wait_until(lambda: ready.exists() or process.poll() is not None)
        assert process.poll() is None, log.read_text()[-3000:]
        yield str(json.loads(ready.read_text())["grpc_address"])
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def grpc_answers(address: str) -> bool:
    """A health check on a new connection gets an answer (serving or not)."""
    with grpc.insecure_channel(address) as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.RpcError as exc:
            return exc.code() not in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.DEADLINE_EXCEEDED,
            )
        return True


def connected(sockets: list[socket.socket]) -> int:
    """How many of these non-blocking sockets finished connecting (or were closed)."""
    poll = select.poll()
    for sock in sockets:
        poll.register(sock, select.POLLOUT)
    return len(poll.poll(0))


def http_answers(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/metrics")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def test_idle_sockets_past_the_cap_leave_grpc_answering(tmp_path: Path) -> None:
    """The old server accepted every socket and kept it: past the process's descriptor
    limit neither its HTTP nor its gRPC server could accept a connection."""
    http_port = free_port()
    with gateway(tmp_path, http_port) as grpc_address:
        assert http_answers(http_port)
        idle = []
        try:
            for _ in range(RAW_SOCKETS):
                sock = socket.socket()
                sock.setblocking(False)
                code = sock.connect_ex(("127.0.0.1", http_port))
                assert code in (0, errno.EINPROGRESS), os.strerror(code)
                idle.append(sock)
            wait_until(lambda: connected(idle) >= CONNECTED_BEFORE_CHECK)
            assert grpc_answers(grpc_address)
        finally:
            for sock in idle:
                sock.close()
        wait_until(lambda: http_answers(http_port))
        assert grpc_answers(grpc_address)
