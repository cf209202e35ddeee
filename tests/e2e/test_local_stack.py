"""`tensorwasm up | status | restart | down` and `make up | status | down`, on real processes.

Two stacks side by side in two data dirs: one from `tensorwasm up --port-base`, one from
`make up` whose addresses come from the TENSORWASM_<SVC>_*_ADDRESS variables (the launcher
must honour them). A taken port is refused in one line before anything starts; a killed
service is restarted alone and serves again.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tensorwasm_client.stack import AUDIT_FILE, PORT_OFFSETS, LocalStack, port_free

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TENSORWASM = Path(sys.executable).parent / "tensorwasm"
SERVICES = ("snapshot", "jit", "dispatcher", "executor", "gateway")


def _env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TENSORWASM_") and k not in ("MAKEFLAGS", "MAKELEVEL")
    }


def tw(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TENSORWASM), *args],
        capture_output=True,
        text=True,
        timeout=150,
        env=env or _env(),
        check=False,
    )


def free_port_base() -> int:
    """A port base whose 21 ports are free now (gRPC, metrics and HTTP of one stack), below
    the kernel's ephemeral range: a port there may become any connection's local port (and
    block a restart) after this check."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        base = random.randrange(10000, max(low - 100, 10100), 100)
        if all(port_free(f"127.0.0.1:{base + i}") for i in range(21)):
            return base
    raise AssertionError("no free port range found")


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def status_lines(stdout: str) -> dict[str, str]:
    return {line.split()[0]: line for line in stdout.splitlines() if line.split()[0] in SERVICES}


@pytest.fixture
def stacks(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    first, second = tmp_path / "first", tmp_path / "second"
    yield first, second
    for data_dir in (first, second):
        LocalStack(data_dir).stop()


def test_two_stacks_a_taken_port_and_a_restart(stacks: tuple[Path, Path], wat_dir: Path) -> None:
    first, second = stacks
    base = free_port_base()
    up = tw("up", "--port-base", str(base), "--data-dir", str(first))  # global flag after
    assert up.returncode == 0, up.stderr
    lines = status_lines(up.stdout)
    assert set(lines) == set(SERVICES)
    for name, offset in PORT_OFFSETS.items():
        assert f"grpc 127.0.0.1:{base + offset} " in lines[name]
        assert f"metrics http://127.0.0.1:{base + 10 + offset}/metrics" in lines[name]
        assert f"log {first / 'logs' / name}.log" in lines[name]
    assert f"http 127.0.0.1:{base + 20}" in lines["gateway"]
    # the dev-mode warning reaches the terminal, not only the log
    assert "warning: gateway: NO BEARER TOKENS CONFIGURED" in up.stderr

    # the same ports from another data dir: refused in one line, naming the port
    clash = tw("--data-dir", str(second), "up", "--port-base", str(base))
    assert clash.returncode == 1
    assert clash.stderr.count("\n") == 1, clash.stderr
    assert f"127.0.0.1:{base + PORT_OFFSETS['snapshot']} (snapshot gRPC) is in use" in clash.stderr
    assert not (second / "stack.json").exists()

    # a second stack through make, its addresses from the environment
    grpc, metrics, http = free_ports(5), free_ports(5), free_ports(1)[0]
    env = _env()
    for i, name in enumerate(PORT_OFFSETS):
        env[f"TENSORWASM_{name.upper()}_LISTEN_ADDRESS"] = f"127.0.0.1:{grpc[i]}"
        env[f"TENSORWASM_{name.upper()}_METRICS_ADDRESS"] = f"127.0.0.1:{metrics[i]}"
    env["TENSORWASM_GATEWAY_HTTP_ADDRESS"] = f"127.0.0.1:{http}"
    make_up = subprocess.run(
        ["make", "--no-print-directory", "up", f"DATA_DIR={second}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert make_up.returncode == 0, make_up.stdout + make_up.stderr
    make_status = subprocess.run(
        ["make", "--no-print-directory", "status", f"DATA_DIR={second}"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert make_status.returncode == 0, make_status.stdout + make_status.stderr
    second_lines = status_lines(make_status.stdout)
    for i, name in enumerate(PORT_OFFSETS):
        assert f"SERVING     grpc 127.0.0.1:{grpc[i]} " in second_lines[name]
        assert f"metrics http://127.0.0.1:{metrics[i]}/metrics" in second_lines[name]
    assert f"http 127.0.0.1:{http}" in second_lines["gateway"]

    # a dead service: status says so (exit 1); restart brings it back alone
    gateway = f"127.0.0.1:{base}"
    deployed = tw("--gateway", gateway, "deploy", str(wat_dir / "add.wat"))
    assert deployed.returncode == 0, deployed.stderr
    # audit records in a file of their own, not among the log lines
    audit = [json.loads(line) for line in (first / "logs" / AUDIT_FILE).read_text().splitlines()]
    assert any(record.get("request_id") for record in audit)
    for line in (first / "logs" / "gateway.log").read_text().splitlines():
        assert "level" in json.loads(line), line
    executor_pid = json.loads((first / "stack.json").read_text())["executor"]["pid"]
    os.kill(executor_pid, signal.SIGKILL)
    down_status = tw("status", "--data-dir", str(first))
    assert down_status.returncode == 1
    assert status_lines(down_status.stdout)["executor"].split()[1] == "EXITED"
    restarted = tw("restart", "executor", "--data-dir", str(first))
    assert restarted.returncode == 0, restarted.stderr
    assert f"grpc 127.0.0.1:{base + 1} " in restarted.stdout
    assert json.loads((first / "stack.json").read_text())["executor"]["pid"] != executor_pid
    # the gateway sees its executor again within its health interval: wait for it
    deadline = time.monotonic() + 90
    while tw("status", "--data-dir", str(first)).returncode != 0:
        assert time.monotonic() < deadline, "the stack never served again after the restart"
        time.sleep(0.5)
    invoked = tw("--gateway", gateway, "invoke", "add", "--args", "[1, 2]")
    assert invoked.returncode == 0, invoked.stderr
    assert invoked.stdout == "[3]\n"
    # a live one restarts too
    restarted = tw("--data-dir", str(first), "restart", "gateway")
    assert restarted.returncode == 0, restarted.stderr
    unknown = tw("--data-dir", str(first), "restart", "nosuch")
    assert unknown.returncode == 1
    assert "no service 'nosuch' in the stack" in unknown.stderr

    make_down = subprocess.run(
        ["make", "--no-print-directory", "down", f"DATA_DIR={second}"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert make_down.returncode == 0, make_down.stderr
    assert "stopped: gateway" in make_down.stdout
    assert tw("down", "--data-dir", str(first)).returncode == 0
