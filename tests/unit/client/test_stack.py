"""Unit tests for the pure parts of tensorwasm_client.stack: state file, liveness, health."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
from tensorwasm_client import stack
from tensorwasm_client.stack import (
    DEFAULT_PORTS,
    SERVICES,
    STATE_FILE,
    LocalStack,
    ServiceProcess,
    default_data_dir,
    health,
)


def _service(name: str, pid: int) -> ServiceProcess:
    return ServiceProcess(
        name=name,
        pid=pid,
        grpc_address=f"127.0.0.1:{DEFAULT_PORTS[name]}",
        metrics_address="127.0.0.1:9100",
        log_path=f"/tmp/logs/{name}.log",
    )


def _unused_pid() -> int:
    """A pid with no process (pid_max is at most 4194304 on Linux)."""
    for pid in range(4_194_303, 4_000_000, -1):
        if not Path(f"/proc/{pid}").exists():
            return pid
    raise AssertionError("no free pid found")


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_start_order_and_default_ports() -> None:
    assert SERVICES == ("snapshot", "jit", "dispatcher", "executor", "gateway")
    assert DEFAULT_PORTS == {
        "gateway": 50051,
        "executor": 50052,
        "dispatcher": 50053,
        "snapshot": 50054,
        "jit": 50055,
    }


def test_default_data_dir_uses_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_data_dir() == tmp_path / "xdg" / "tensorwasm"


def test_default_data_dir_falls_back_to_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_dir() == tmp_path / "home" / ".local" / "share" / "tensorwasm"


def test_state_path_is_resolved_inside_the_data_dir(tmp_path: Path) -> None:
    relative = Path(os.path.relpath(tmp_path / "data"))
    local = LocalStack(relative)
    assert local.data_dir == (tmp_path / "data").resolve()
    assert local.state_path == (tmp_path / "data").resolve() / STATE_FILE


def test_no_state_file_means_no_services(tmp_path: Path) -> None:
    local = LocalStack(tmp_path)
    assert local.services() == {}
    assert local.running() is False
    assert local.stop() == []
    assert not local.state_path.exists()


def test_state_file_round_trip(tmp_path: Path) -> None:
    local = LocalStack(tmp_path)
    services = {name: _service(name, 1000 + i) for i, name in enumerate(SERVICES)}
    local._write_state(services)
    assert local.services() == services
    raw = json.loads(local.state_path.read_text())
    assert list(raw) == list(SERVICES)
    assert raw["gateway"] == asdict(services["gateway"])
    assert not local.state_path.with_suffix(".tmp").exists()  # written atomically


def test_state_file_is_replaced_not_merged(tmp_path: Path) -> None:
    local = LocalStack(tmp_path)
    local._write_state({"snapshot": _service("snapshot", 1), "jit": _service("jit", 2)})
    local._write_state({"gateway": _service("gateway", 3)})
    assert local.services() == {"gateway": _service("gateway", 3)}


def test_dead_recorded_services_are_not_running_and_stop_clears_state(tmp_path: Path) -> None:
    local = LocalStack(tmp_path)
    pid = _unused_pid()
    local._write_state({name: _service(name, pid) for name in SERVICES})
    assert local.running() is False
    assert local.stop(grace_seconds=0) == []  # nothing alive to stop
    assert not local.state_path.exists()
    assert local.services() == {}


def test_alive_is_false_for_a_missing_pid() -> None:
    assert stack._alive(_service("gateway", _unused_pid())) is False


def test_alive_is_false_for_a_process_that_is_not_the_service() -> None:
    # This test process is alive but its command line does not name tensorwasm_gateway.
    assert stack._alive(_service("gateway", os.getpid())) is False


@pytest.fixture
def fake_service() -> Iterator[subprocess.Popen[bytes]]:
    """A sleeping process whose command line mentions tensorwasm_executor."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; print('ready', flush=True); time.sleep(120)",
            "tensorwasm_executor",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    # Wait until the interpreter runs: right after exec, /proc/<pid>/cmdline can be empty.
    assert process.stdout.readline() == b"ready\n"
    process.stdout.close()
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def test_alive_matches_the_service_command_line(
    fake_service: subprocess.Popen[bytes],
) -> None:
    assert stack._alive(_service("executor", fake_service.pid)) is True
    assert stack._alive(_service("gateway", fake_service.pid)) is False


def test_stop_terminates_a_recorded_live_service(
    tmp_path: Path, fake_service: subprocess.Popen[bytes]
) -> None:
    local = LocalStack(tmp_path)
    local._write_state(
        {
            "snapshot": _service("snapshot", _unused_pid()),
            "executor": _service("executor", fake_service.pid),
        }
    )
    assert local.running() is True
    # The process is our child but not LocalStack's: once it is a zombie it counts as gone.
    assert local.stop(grace_seconds=30) == ["executor"]
    assert fake_service.wait(timeout=30) == -15  # SIGTERM
    assert not local.state_path.exists()
    assert local.running() is False


def test_health_of_an_unreachable_address() -> None:
    assert health(f"127.0.0.1:{_closed_port()}", timeout_seconds=5) == "UNREACHABLE"


def test_tail_of_a_missing_log(tmp_path: Path) -> None:
    assert stack._tail(tmp_path / "missing.log") == "(no log)"


def test_tail_keeps_the_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    log.write_text("".join(f"line {i}\n" for i in range(50)))
    assert stack._tail(log) == "\n".join(f"line {i}" for i in range(20, 50))
    assert stack._tail(log, lines=2) == "line 48\nline 49"


# --- where the services listen (StackAddresses, the environment, the port check) ---


def _planned(local: LocalStack) -> dict[str, dict[str, str]]:
    return {name: local.planned_addresses(name) for name in SERVICES}


def test_port_base_places_grpc_metrics_and_http(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in SERVICES:
        for face in ("LISTEN", "METRICS", "HTTP"):
            monkeypatch.delenv(f"TENSORWASM_{name.upper()}_{face}_ADDRESS", raising=False)
    default = _planned(LocalStack(tmp_path))
    assert default["gateway"] == {
        "grpc": "127.0.0.1:50051",
        "metrics": "127.0.0.1:50061",
        "http": "127.0.0.1:8080",
    }
    assert default["jit"] == {"grpc": "127.0.0.1:50055", "metrics": "127.0.0.1:50065"}
    moved = _planned(
        LocalStack(tmp_path, addresses=stack.StackAddresses("0.0.0.0", 41000, {"jit": 42000}))
    )
    assert moved["gateway"]["http"] == "0.0.0.0:41020"
    assert moved["executor"] == {"grpc": "0.0.0.0:41001", "metrics": "0.0.0.0:41011"}
    assert moved["jit"]["grpc"] == "0.0.0.0:42000"
    off = LocalStack(tmp_path, addresses=stack.StackAddresses(http_address="off"))
    assert off.planned_addresses("gateway")["http"] == ""


def test_environment_addresses_are_honoured_and_explicit_ports_beat_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENSORWASM_GATEWAY_LISTEN_ADDRESS", "127.0.0.1:7001")
    monkeypatch.setenv("TENSORWASM_GATEWAY_METRICS_ADDRESS", "127.0.0.1:7002")
    monkeypatch.setenv("TENSORWASM_GATEWAY_HTTP_ADDRESS", "127.0.0.1:7003")
    monkeypatch.setenv("TENSORWASM_SNAPSHOT_LISTEN_ADDRESS", "127.0.0.1:7004")
    local = LocalStack(tmp_path)
    assert local.planned_addresses("gateway") == {
        "grpc": "127.0.0.1:7001",
        "metrics": "127.0.0.1:7002",
        "http": "127.0.0.1:7003",
    }
    env = local._service_env("snapshot", {})
    assert env["TENSORWASM_SNAPSHOT_LISTEN_ADDRESS"] == "127.0.0.1:7004"
    flagged = LocalStack(
        tmp_path,
        addresses=stack.StackAddresses(ports={"gateway": 7100}, http_address="127.0.0.1:7101"),
    )
    assert flagged.planned_addresses("gateway")["grpc"] == "127.0.0.1:7100"
    assert flagged.planned_addresses("gateway")["http"] == "127.0.0.1:7101"


def test_a_gateway_of_several_processes_keeps_its_one_metrics_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # its supervisor serves every worker's series there (the workers' own are ephemeral)
    monkeypatch.delenv("TENSORWASM_GATEWAY_METRICS_ADDRESS", raising=False)
    local = LocalStack(tmp_path)
    for processes in ("2", "1", "0"):
        monkeypatch.setenv("TENSORWASM_GATEWAY_PROCESSES", processes)
        assert local.planned_addresses("gateway")["metrics"] == "127.0.0.1:50061"
        assert local.planned_addresses("executor")["metrics"] == "127.0.0.1:50062"
    monkeypatch.setenv("TENSORWASM_GATEWAY_METRICS_ADDRESS", "127.0.0.1:7200")
    assert local.planned_addresses("gateway")["metrics"] == "127.0.0.1:7200"


def _free_port_base() -> int:
    for base in range(21000, 32000, 100):  # below the kernel's usual ephemeral range
        if all(stack.port_free(f"127.0.0.1:{base + i}") for i in range(21)):
            return base
    raise AssertionError("no free port range")


def test_a_taken_port_is_named_before_anything_starts(tmp_path: Path) -> None:
    base = _free_port_base()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", base + 1))  # the executor's gRPC port
        holder.listen()
        port = base + 1
        local = LocalStack(tmp_path, addresses=stack.StackAddresses(port_base=base))
        with pytest.raises(stack.StackError) as refused:
            local.start()
    message = str(refused.value)
    assert message.startswith(f"127.0.0.1:{port} (executor gRPC) is in use")
    assert "\n" not in message
    assert not (tmp_path / "logs").exists()  # nothing was started


def test_bad_addresses_are_refused() -> None:
    with pytest.raises(stack.StackError, match="no service named nosuch"):
        stack.StackAddresses(ports={"nosuch": 1})
    with pytest.raises(stack.StackError, match="port base 65530"):
        stack.StackAddresses(port_base=65530)


def test_a_large_log_is_rotated_before_its_service_starts(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    assert stack.rotate_log(log, max_bytes=10) is False  # none yet
    log.write_text("small\n")
    assert stack.rotate_log(log, max_bytes=10) is False
    for generation in range(1, 5):
        log.write_text(f"generation {generation}: more than ten bytes\n")
        assert stack.rotate_log(log, max_bytes=10, keep=3) is True
        assert not log.exists()
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert kept == ["gateway.log.1", "gateway.log.2", "gateway.log.3"]  # the oldest dropped
    assert (tmp_path / "gateway.log.1").read_text().startswith("generation 4")
    assert (tmp_path / "gateway.log.3").read_text().startswith("generation 2")


def test_replicas_of_gateway_store_and_executor_are_named_and_kept_apart(tmp_path: Path) -> None:
    local = LocalStack(tmp_path, executor_replicas=2, gateway_replicas=2, snapshot_replicas=2)
    assert local._names == [
        "snapshot", "snapshot-2", "jit", "dispatcher", "executor", "executor-2",
        "gateway", "gateway-2",
    ]  # fmt: skip
    started = {
        name: ServiceProcess(name, 1, f"127.0.0.1:{port}", "", "")
        for name, port in (("snapshot", 7001), ("snapshot-2", 7002), ("executor", 7003),
                           ("executor-2", 7004))
    }  # fmt: skip
    # The store's clients get one target naming every replica (balanced over them).
    assert stack.store_target(started) == "ipv4:127.0.0.1:7001,127.0.0.1:7002"
    gateway_2 = local._service_env("gateway-2", started)
    assert gateway_2["TENSORWASM_GATEWAY_SNAPSHOT_ADDRESS"] == stack.store_target(started)
    assert gateway_2["TENSORWASM_GATEWAY_EXECUTOR_ADDRESSES"] == "127.0.0.1:7003,127.0.0.1:7004"
    # A second gateway does not take the first one's ports, HTTP face or audit file.
    assert local.planned_addresses("gateway-2")["grpc"].endswith(":0")
    assert (
        local.planned_addresses("gateway-2")["http"] != local.planned_addresses("gateway")["http"]
    )
    assert gateway_2["TENSORWASM_GATEWAY_AUDIT_LOG"].endswith("gateway-2.audit.jsonl")
    # Each store replica has a data directory of its own.
    first = local._service_env("snapshot", {})["TENSORWASM_SNAPSHOT_DATA_DIR"]
    second = local._service_env("snapshot-2", {})["TENSORWASM_SNAPSHOT_DATA_DIR"]
    assert first != second
    single = {"snapshot": started["snapshot"]}
    assert stack.store_target(single) == "127.0.0.1:7001"


def test_store_replicas_are_refused_with_tls(tmp_path: Path) -> None:
    with pytest.raises(stack.StackError, match="not with TLS"):
        LocalStack(tmp_path, snapshot_replicas=2, tls=True)


# A process whose main thread exits (pthread_exit: it stays a zombie) while another thread
# keeps a listening socket open until a file appears: how a service looks for a moment
# when it exits with threads of its own still running.
_LINGERING_THREAD = """
import ctypes, os, socket, sys, threading, time
listener = socket.create_server(("127.0.0.1", 0))
release = sys.argv[1]

def linger():
    while not os.path.exists(release):
        time.sleep(0.01)
    listener.close()

threading.Thread(target=linger).start()
print(listener.getsockname()[1], flush=True)
ctypes.CDLL(None).pthread_exit(None)
"""


def test_a_service_whose_main_thread_exited_first_runs_until_its_last_thread_did(
    tmp_path: Path,
) -> None:
    release = tmp_path / "release"
    child = subprocess.Popen(
        # the service's module name in its command line, as `python -m` puts it there
        [sys.executable, "-c", _LINGERING_THREAD, str(release), "tensorwasm_gateway"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        address = f"127.0.0.1:{int(child.stdout.readline())}"
        service = stack.ServiceProcess("gateway", child.pid, address, "", str(tmp_path / "log"))
        deadline = time.monotonic() + 60
        while stack._alive(service):  # the main thread is a zombie: not running any more...
            assert time.monotonic() < deadline, "the main thread never exited"
            time.sleep(0.01)
        # ...but the process is still on its way out, its socket open
        assert stack._alive(service, exiting=True)
        assert not stack.port_free(address)
        release.touch()
        while stack._alive(service, exiting=True):
            assert time.monotonic() < deadline, "the last thread never exited"
            time.sleep(0.01)
        assert stack.port_free(address)
    finally:
        release.touch()
        child.wait(60)
        if child.stdout is not None:
            child.stdout.close()
