"""`tensorwasm bench FILE` in process: nearest-rank percentiles, a fresh instance per call,
the report, and how failures end it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tensorwasm_client.cli import app
from tensorwasm_client.cli.bench import BenchReport, nearest_rank
from typer.testing import CliRunner, Result

# Traps on its second call in one instance: a bench of it passes only if every call
# has an instance of its own.
ONCE_PER_INSTANCE = """(module
  (global $called (mut i32) (i32.const 0))
  (func (export "once") (result i32)
    global.get $called
    if unreachable end
    i32.const 1
    global.set $called
    i32.const 7))"""


def tensorwasm(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), prog_name="tensorwasm")


@pytest.mark.parametrize(
    ("samples", "percent", "expected"),
    [
        ([5], 50, 5),
        ([5], 99, 5),
        ([1, 2], 50, 1),  # ceil(0.5 * 2) = 1st
        ([1, 2], 51, 2),
        (list(range(1, 101)), 50, 50),
        (list(range(1, 101)), 95, 95),
        (list(range(1, 101)), 99, 99),
        (list(range(1, 101)), 100, 100),
        (list(range(1, 11)), 95, 10),  # ceil(9.5) = 10th
        (list(range(1, 11)), 99, 10),
        (list(range(1, 1001)), 99, 990),
        (list(range(1, 8)), 50, 4),  # ceil(3.5) = 4th: a measured value, never a mean
    ],
)
def test_nearest_rank(samples: list[int], percent: int, expected: int) -> None:
    assert nearest_rank(samples, percent) == expected


def test_nearest_rank_refuses_no_samples_and_bad_percentiles() -> None:
    with pytest.raises(ValueError, match="no samples"):
        nearest_rank([], 50)
    for percent in (0, 101):
        with pytest.raises(ValueError, match="percent"):
            nearest_rank([1], percent)


def test_the_report_is_taken_from_the_sorted_samples() -> None:
    report = BenchReport.of("m.wasm", "run", [30, 10, 20, 40, 1000])
    assert (report.calls, report.p50_ns, report.p95_ns, report.p99_ns, report.max_ns) == (
        5, 30, 1000, 1000, 1000,
    )  # fmt: skip


def test_bench_spawns_an_instance_per_call_and_reports_nearest_rank(tmp_path: Path) -> None:
    module = tmp_path / "once.wat"
    module.write_text(ONCE_PER_INSTANCE)
    result = tensorwasm("--output", "json", "bench", str(module), "--n", "25", "--warmup", "2")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["file"], report["export"], report["calls"]) == ("once.wat", "once", 25)
    assert 0 < report["p50_ns"] <= report["p95_ns"] <= report["p99_ns"] <= report["max_ns"]


def test_bench_prints_the_percentiles(wat_dir: Path) -> None:
    result = tensorwasm("bench", str(wat_dir / "add.wat"), "--args", "[1, 2]", "-n", "3")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "add.wat add: 3 calls (nearest rank)"
    assert [line.split()[0] for line in lines[1:]] == ["p50", "p95", "p99", "max"]
    assert all(line.split()[-1] in ("ns", "µs", "ms", "s") for line in lines[1:])


def test_a_failing_call_stops_the_bench(wat_dir: Path) -> None:
    trap = tensorwasm("bench", str(wat_dir / "traps.wat"), "--export", "boom")
    assert trap.exit_code == 1
    assert "error: guest failed on call 1: TRAP" in trap.output

    exited = tensorwasm("bench", str(wat_dir / "wasi_echo.wat"), "--export", "exit3")
    assert exited.exit_code == 3
    assert "error: guest failed on call 1: PROC_EXIT" in exited.output


@pytest.mark.parametrize(
    "args",
    [("--n", "0"), ("--warmup", "-1"), ("--n", "many")],
)
def test_bench_usage_errors_exit_2(wat_dir: Path, args: tuple[str, ...]) -> None:
    result = tensorwasm("bench", str(wat_dir / "add.wat"), *args)
    assert result.exit_code == 2, result.output


def test_bench_refusals_exit_1(wat_dir: Path, tmp_path: Path) -> None:
    missing = tensorwasm("bench", str(tmp_path / "missing.wasm"))
    assert missing.exit_code == 1 and missing.output.startswith("error: ")
    wrong = tensorwasm("bench", str(wat_dir / "add.wat"), "--args", "[1]")
    assert wrong.exit_code == 1 and wrong.output.startswith("error: ")
    unknown = tensorwasm("bench", str(wat_dir / "add.wat"), "--export", "nope")
    assert unknown.exit_code == 1
    assert "choose an export with --export: add" in unknown.output
