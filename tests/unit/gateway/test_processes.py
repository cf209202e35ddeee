"""TENSORWASM_GATEWAY_PROCESSES: its validation, the concurrency caps divided among the
workers and the supervisor's port reservation (its /metrics over the workers': in
test_worker_metrics.py)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys

import pytest
from tensorwasm_common.settings import SettingsError, load_settings
from tensorwasm_gateway.errors import ConcurrencyExhaustedError
from tensorwasm_gateway.server import build_guard, per_worker_cap
from tensorwasm_gateway.settings import GatewaySettings
from tensorwasm_gateway.supervisor import BindError, reserve

POSTGRES = "postgresql://u:p@127.0.0.1:1/db"  # parsed only


def _load(**env: str) -> GatewaySettings:
    environ = {f"TENSORWASM_GATEWAY_{k.upper()}": v for k, v in env.items()}
    return load_settings(GatewaySettings, "gateway", environ=environ)


def test_one_process_by_default_on_sqlite() -> None:
    settings = _load()
    assert settings.processes == 1
    assert settings.worker_count == 1


@pytest.mark.parametrize("value", ["2", "0"])
def test_several_processes_on_sqlite_are_refused_naming_the_setting(value: str) -> None:
    with pytest.raises(SettingsError, match=r"TENSORWASM_GATEWAY_PROCESSES.*PostgreSQL"):
        _load(processes=value)


@pytest.mark.parametrize("value", ["-1", "257"])
def test_out_of_range_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match=r"TENSORWASM_GATEWAY_PROCESSES.*\[0, 256\]"):
        _load(processes=value, database_url=POSTGRES)


def test_not_a_number_is_refused() -> None:
    with pytest.raises(SettingsError, match="TENSORWASM_GATEWAY_PROCESSES: expected int"):
        _load(processes="two")


def test_zero_is_one_per_usable_cpu() -> None:
    settings = _load(processes="0", database_url=POSTGRES)
    assert settings.worker_count == len(os.sched_getaffinity(0))
    assert _load(processes="3", database_url=POSTGRES).worker_count == 3


def test_a_bad_value_exits_2_naming_the_setting() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tensorwasm_gateway"],
        env={**os.environ, "TENSORWASM_GATEWAY_PROCESSES": "-3"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "TENSORWASM_GATEWAY_PROCESSES" in result.stderr


@pytest.mark.parametrize(
    ("cap", "workers", "share"),
    [(512, 2, 256), (8, 3, 2), (3, 4, 1), (1, 2, 1), (0, 4, 0), (7, 1, 7)],
)
def test_a_cap_is_divided_among_the_workers(cap: int, workers: int, share: int) -> None:
    assert per_worker_cap(cap, workers) == share


def test_each_worker_guard_holds_its_share_of_the_cap() -> None:
    settings = _load(processes="2", database_url=POSTGRES, max_concurrent_admin="8")
    caps = build_guard(settings).caps
    for _ in range(4):
        caps.acquire("admin")
    with pytest.raises(ConcurrencyExhaustedError, match="limit 4"):
        caps.acquire("admin")


def test_a_reserved_port_is_concrete_and_shared_with_reuseport_only() -> None:
    held, address = reserve("127.0.0.1:0", "listen_address")
    with contextlib.closing(held):
        port = int(address.rsplit(":", 1)[1])
        assert address == f"127.0.0.1:{port}" and port > 0
        # a worker binding with SO_REUSEPORT joins it, and listens alone
        with socket.socket() as worker:
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", port))
            worker.listen()
            with socket.create_connection(("127.0.0.1", port), timeout=10):
                accepted, _ = worker.accept()
                accepted.close()
        # a program without SO_REUSEPORT cannot take it
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", port))


def test_a_port_in_use_is_a_bind_error_naming_the_setting() -> None:
    with contextlib.closing(socket.create_server(("127.0.0.1", 0))) as holder:
        port = holder.getsockname()[1]
        with pytest.raises(BindError, match=f"127.0.0.1:{port} \\(http_address\\)"):
            reserve(f"127.0.0.1:{port}", "http_address")
