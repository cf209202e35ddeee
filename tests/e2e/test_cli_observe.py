"""`tensorwasm observe`, `metrics`, `bench` and `completions` as a user runs them, against a
real stack: known calls over gRPC (and the CLI), then the numbers the CLI shows are those
the stack's own accounting holds."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2 as dispatcher_pb
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2_grpc as dispatcher_grpc
from tensorwasm_client.client import GatewayClient, TensorWasmError
from tensorwasm_client.stack import LocalStack

from tests.e2e.test_cli import TENSORWASM, Cli, cli_env, stack_cli  # noqa: F401 - fixture

pytestmark = pytest.mark.integration

DEADLINE_SECONDS = 60.0
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def board(cli: Cli) -> dict[str, Any]:
    """One frame of `observe --once` as JSON."""
    found: dict[str, Any] = json.loads(cli.ok("--output", "json", "observe", "--once"))
    return found


def board_when(cli: Cli, settled: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first frame for which `settled` holds (counters a call updates as it ends, and
    the dispatcher's after the executor closes its session, may trail the call's reply)."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        frame = board(cli)
        if settled(frame):
            return frame
        assert time.monotonic() < deadline, f"the board never settled: {frame}"
        time.sleep(0.05)


def tenant_row(frame: dict[str, Any], tenant: str) -> dict[str, Any]:
    rows = [row for row in frame["tenants"] if row["tenant"] == tenant]
    return rows[0] if rows else {"calls": 0, "errors": 0, "gpu_seconds": 0.0,
                                 "kernel_launches": 0, "staged_bytes": 0}  # fmt: skip


def dispatcher_usage(data_dir: Path, tenant: str) -> dispatcher_pb.GetTenantUsageResponse:
    with LocalStack(data_dir).internal_channel("dispatcher") as channel:
        usage: dispatcher_pb.GetTenantUsageResponse = dispatcher_grpc.DispatcherServiceStub(
            channel
        ).GetTenantUsage(dispatcher_pb.GetTenantUsageRequest(tenant=tenant), timeout=10)
    return usage


def test_observe_shows_the_calls_errors_tenants_and_gpu_time_of_the_stack(
    stack_cli: Cli,  # noqa: F811
    wat_dir: Path,
    cuda_guest: Callable[[str], bytes],
) -> None:
    cli = Cli(stack_cli.data_dir, stack_cli.gateway)
    before = board(cli)
    assert all(not source["error"] for source in before["sources"]), before["sources"]
    assert {source["name"] for source in before["sources"]} == {
        "gateway", "executor", "dispatcher", "snapshot", "jit",
    }  # fmt: skip
    not_found_before = before["errors_by_reason"].get("FUNCTION_NOT_FOUND", 0)

    assert stack_cli.gateway is not None
    with GatewayClient(stack_cli.gateway, tenant="observe-calls") as client:
        client.create_function("add", bytes(wasmtime.wat2wasm((wat_dir / "add.wat").read_text())))
        for value in range(5):
            reply = client.invoke("add", "add", [Value(i32=value), Value(i32=1)])
            assert reply.outcome.success.results[0].i32 == value + 1
        for _ in range(2):
            with pytest.raises(TensorWasmError, match="FUNCTION_NOT_FOUND"):
                client.invoke("no-such-function", "run")
    with GatewayClient(stack_cli.gateway, tenant="observe-gpu") as client:
        client.create_function("vector-add", cuda_guest("cuda_vector_add"))
        for _ in range(3):
            assert client.invoke("vector-add", "run").outcome.success.results[0].i32 == 0

    frame = board_when(
        cli,
        lambda f: (
            tenant_row(f, "observe-calls")["calls"] == 7
            and tenant_row(f, "observe-gpu")["kernel_launches"] == 3
            and f["executor_in_flight"] == 0
        ),
    )
    calls = tenant_row(frame, "observe-calls")
    assert (calls["calls"], calls["errors"], calls["kernel_launches"]) == (7, 2, 0)
    assert frame["errors_by_reason"]["FUNCTION_NOT_FOUND"] == not_found_before + 2
    assert frame["calls_total"] == before["calls_total"] + 10
    assert frame["calls_per_second"] is None  # one frame: no window
    assert frame["latency_p50_seconds"] is not None
    assert 0 < frame["latency_p50_seconds"] <= frame["latency_p99_seconds"]

    gpu = tenant_row(frame, "observe-gpu")
    usage = dispatcher_usage(stack_cli.data_dir, "observe-gpu")
    assert gpu["kernel_launches"] == usage.launches == 3
    assert gpu["gpu_seconds"] == pytest.approx(
        usage.kernel_time.ToTimedelta().total_seconds(), abs=1e-5
    )
    assert gpu["staged_bytes"] == usage.staged_bytes_current == 0
    assert frame["kernel_launches_total"] >= 3
    assert frame["dispatcher_queued_batches"] == 0
    assert frame["executor_in_flight_limit"] >= 1
    assert frame["store_objects"] >= 2 and frame["store_refs"] >= 2
    assert frame["store_bytes"] > 0 and frame["store_bytes_at_rest"] > 0

    # The same frame, drawn: the numbers are on the board a user sees.
    text = cli.ok("observe", "--once")
    rows = {cells[0]: cells for cells in _table_rows(text)}
    assert rows["observe-calls"][1:3] == ["7", "2"]
    assert rows["observe-gpu"][1] == "3" and rows["observe-gpu"][4] == "3"
    assert rows["FUNCTION_NOT_FOUND"] == ["FUNCTION_NOT_FOUND", str(not_found_before + 2)]
    assert rows["gateway"][2] == "ok"


def test_observe_counts_what_the_store_holds(stack_cli: Cli, tmp_path: Path) -> None:  # noqa: F811
    cli = Cli(stack_cli.data_dir, stack_cli.gateway, tenant="observe-store")
    before = board(cli)
    module = tmp_path / "big.wat"
    payload = "x" * 40_000  # a data segment: a module of its own, 40 kB bigger than others
    module.write_text(f'(module (memory 1) (data (i32.const 0) "{payload}") '
                      '(func (export "f") (result i32) i32.const 1))')  # fmt: skip
    cli.ok("deploy", str(module))
    after = board_when(cli, lambda f: f["store_objects"] > before["store_objects"])
    assert after["store_bytes"] >= before["store_bytes"] + 40_000
    assert after["store_refs"] > before["store_refs"]


def test_metrics_shows_the_gateways_series_readably(stack_cli: Cli, wat_dir: Path) -> None:  # noqa: F811
    cli = Cli(stack_cli.data_dir, stack_cli.gateway, tenant="metrics-reader")
    cli.ok("deploy", str(wat_dir / "add.wat"))
    for _ in range(3):
        cli.ok("invoke", "add", "--args", "[1, 2]")
    shown = cli.ok("metrics", "tensorwasm_gateway_invocations")
    lines = shown.splitlines()
    assert lines[0].startswith("tensorwasm_gateway_invocations (counter): ")
    assert re.search(r"^  code=OK method=invoke tenant=metrics-reader +3$", shown, re.M), shown

    store = cli.ok("metrics", "--service", "snapshot", "tensorwasm_snapshot_objects")
    assert re.match(r"tensorwasm_snapshot_objects \(gauge\): .*\n  - +\d+\n", store), store
    raw = cli.ok("metrics", "--raw")
    assert "# TYPE tensorwasm_gateway_invocations_total counter" in raw
    assert "no service 'nope'" in cli.fails("metrics", "--service", "nope")


def test_observe_live_redraws_with_a_call_rate_until_ctrl_c(stack_cli: Cli) -> None:  # noqa: F811
    # On a terminal (a pty), as a user watches it: frames every interval, the second with
    # a rate; Ctrl-C ends it with exit 0.
    primary, secondary = pty.openpty()
    env = {**cli_env(), "COLUMNS": "120", "LINES": "80", "TERM": "xterm"}
    process = subprocess.Popen(
        [str(TENSORWASM), "--data-dir", str(stack_cli.data_dir), "observe", "--interval", "0.5"],
        stdin=secondary, stdout=secondary, stderr=secondary, env=env, close_fds=True,
    )  # fmt: skip
    os.close(secondary)
    seen = ""
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not re.search(r"│ +\d+ │ +\d+\.\d │", seen):  # a calls/s figure
            assert time.monotonic() < deadline, seen[-2000:]
            ready, _, _ = select.select([primary], [], [], 1.0)
            if ready:
                seen += _ANSI.sub("", os.read(primary, 65536).decode(errors="replace"))
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=DEADLINE_SECONDS) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(primary)
    assert "tenants" in seen and "dispatcher" in seen and "sources" in seen


def test_bench_runs_locally_from_the_console_script(wat_dir: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(TENSORWASM), "--data-dir", str(tmp_path / "unused"), "--output", "json",
         "bench", str(wat_dir / "add.wat"), "--args", "[1, 2]", "--n", "10"],
        capture_output=True, text=True, timeout=100, env=cli_env(), check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["calls"] == 10 and report["export"] == "add"
    assert 0 < report["p50_ns"] <= report["p95_ns"] <= report["p99_ns"] <= report["max_ns"]
    assert not (tmp_path / "unused").exists()  # no services


def test_completion_scripts_complete_the_commands(tmp_path: Path) -> None:
    env = {**cli_env(), "PATH": f"{TENSORWASM.parent}{os.pathsep}{os.environ['PATH']}"}
    script = subprocess.run(
        [str(TENSORWASM), "completions", "bash", "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env=env, check=True,
    )  # fmt: skip
    assert script.stdout.strip() == str(tmp_path / "tensorwasm.bash")
    # bash loads the script and completes `tensorwasm obs` and `tensorwasm be` as a user's
    # Tab would.
    completed = subprocess.run(
        ["bash", "-c", f"source {tmp_path / 'tensorwasm.bash'}; "
         "for word in obs be; do COMP_WORDS=(tensorwasm $word); COMP_CWORD=1; "
         "_tensorwasm_completion tensorwasm; echo \"${COMPREPLY[@]}\"; done"],
        capture_output=True, text=True, timeout=60, env=env, check=True,
    )  # fmt: skip
    assert completed.stdout.splitlines() == ["observe", "bench"]


def _table_rows(text: str) -> list[list[str]]:
    """The body rows of the rich tables in `text`, as their cells."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in text.splitlines()
        if line.startswith("│")
    ]
