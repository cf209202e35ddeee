"""`tensorwasm bench FILE`: a module's call latency, measured locally (no services).

Each iteration spawns a fresh instance, calls the export and ends the instance, as a
deployed function's call does; the module is compiled once, before the first. The
latencies are reported by nearest rank (the sorted samples' `ceil(p * n)`-th), so every
figure printed is one that was measured.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from tensorwasm_client.cli.common import Fuel, JsonArgs, global_options, json_args
from tensorwasm_client.local_run import DEFAULT_RUN_TIMEOUT_SECONDS, local_module, local_outcome

# The percentiles printed (besides the maximum), in percent.
PERCENTILES = (50, 95, 99)


def nearest_rank(ordered: list[int], percent: int) -> int:
    """The `percent`-th percentile of `ordered` (ascending, not empty) by nearest rank:
    the element at rank ceil(percent/100 * n), in integer arithmetic."""
    if not ordered:
        raise ValueError("no samples")
    if not 0 < percent <= 100:
        raise ValueError(f"percent must be in (0, 100], got {percent}")
    rank = -(-percent * len(ordered) // 100)  # ceil without floats
    return ordered[rank - 1]


@dataclass(frozen=True)
class BenchReport:
    """The latencies of `calls` calls of `export`, in nanoseconds."""

    file: str
    export: str
    calls: int
    p50_ns: int
    p95_ns: int
    p99_ns: int
    max_ns: int

    @classmethod
    def of(cls, file: str, export: str, samples_ns: list[int]) -> BenchReport:
        ordered = sorted(samples_ns)
        p50, p95, p99 = (nearest_rank(ordered, p) for p in PERCENTILES)
        return cls(file, export, len(ordered), p50, p95, p99, ordered[-1])


def bench(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="the module, .wasm or .wat", metavar="FILE")],
    *,
    export: Annotated[
        str, typer.Option(help="export to call (default: _start or the only one)")
    ] = "",
    args: JsonArgs = "[]",
    iterations: Annotated[int, typer.Option("--n", "-n", min=1, help="calls to measure")] = 100,
    warmup: Annotated[
        int, typer.Option("--warmup", min=0, help="calls made first and not measured")
    ] = 0,
    timeout: Annotated[
        float, typer.Option("--timeout", help="each call's guest deadline in seconds (0: none)")
    ] = DEFAULT_RUN_TIMEOUT_SECONDS,
    fuel: Fuel = 0,
) -> int:
    """Measure a module's call latency locally: P50/P95/P99/max by nearest rank.

    Each call spawns a fresh instance, calls the export (with --args) and ends the
    instance; the module is compiled once. The guest's output is discarded. A call that
    fails stops the bench (exit 1, or n for proc_exit(n)).
    """
    raw_args = json_args(args)
    with local_module(
        file, export=export, json_args=raw_args, timeout_seconds=timeout, fuel=fuel
    ) as (prepared, has_results):
        from tensorwasm_executor.wasm.sandbox import WasiOptions

        wasi = WasiOptions(argv=(file.name,))
        samples: list[int] = []
        for index in range(warmup + iterations):
            started = time.perf_counter_ns()
            outcome = prepared.call(wasi=wasi, on_output=_discard, fuel=fuel)
            elapsed = time.perf_counter_ns() - started
            if outcome.failure is not None:
                failed = local_outcome(outcome, has_results)
                print(
                    f"error: guest failed on call {index + 1}: "
                    f"{failed.failure_reason}: {failed.failure_message}",
                    file=sys.stderr,
                )
                return (failed.exit_code or 1) if failed.failure_reason == "PROC_EXIT" else 1
            if index >= warmup:
                samples.append(elapsed)
        report = BenchReport.of(file.name, prepared.export, samples)
    if global_options(ctx).output == "json":
        print(json.dumps(report.__dict__))
    else:
        print(_text(report))
    return 0


def _discard(stream: str, data: bytes) -> None:
    """The guest's output under `bench`: not kept."""


def _text(report: BenchReport) -> str:
    rows = [("p50", report.p50_ns), ("p95", report.p95_ns), ("p99", report.p99_ns)]
    rows.append(("max", report.max_ns))
    lines = [f"{report.file} {report.export}: {report.calls} calls (nearest rank)"]
    lines += [f"{name:<4} {_duration(value):>10}" for name, value in rows]
    return "\n".join(lines)


def _duration(nanoseconds: int) -> str:
    """`812 ns`, `41.3 µs`, `2.05 ms`, `1.200 s`."""
    if nanoseconds < 1_000:
        return f"{nanoseconds} ns"
    if nanoseconds < 1_000_000:
        return f"{nanoseconds / 1e3:.1f} µs"
    if nanoseconds < 1_000_000_000:
        return f"{nanoseconds / 1e6:.2f} ms"
    return f"{nanoseconds / 1e9:.3f} s"
