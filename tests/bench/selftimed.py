"""Self-timed tiers: benchmarks a group measures itself, with its own (small) sample count.

The harness gives every group the run's one sample count (2000, or 300 with `--quick`). Some
benchmarks cannot take that many samples: a 500M-iteration loop, a 0.3 s compile, a throughput
run of a few hundred concurrent calls. A group measures those itself while it sets up, with
`run_self_timed`, which follows the harness's rules (warm-up, rotating interleaved blocks, GC
collected between blocks and disabled inside, nearest-rank statistics via `harness.summarize`,
ratios against anchors of the same tier) and prints a table in the harness's format. The group
then stores the results in the `params` of its harness-timed benchmarks (`as_params`), so they
land in `<out>/<group>.json` next to the harness's own results.

A benchmark whose callable returns `Reported(ns)` contributes that duration instead of the wall
time around the call: a native subprocess that times its kernel itself.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tests.bench.harness import (
    Benchmark,
    BenchResult,
    GroupReport,
    RunConfig,
    block_sizes,
    build_results,
    format_table,
    validate,
)


@dataclass(frozen=True)
class Reported:
    """A duration the benchmarked code measured itself (e.g. inside a subprocess)."""

    ns: int


@dataclass(frozen=True)
class Tier:
    """How much to measure in a self-timed tier."""

    samples: int
    warmup: int
    blocks: int

    def config(self) -> RunConfig:
        """The equivalent harness config (for the printed table and the JSON)."""
        return RunConfig(samples=self.samples, warmup=self.warmup, blocks=self.blocks)


def measure_self_timed(benchmarks: Sequence[Benchmark], tier: Tier) -> dict[str, list[int]]:
    """`harness.measure`, except that a `Reported` return value replaces the wall time."""
    validate(benchmarks)
    for bench in benchmarks:
        for _ in range(tier.warmup):
            bench.fn()
    samples: dict[str, list[int]] = {b.name: [] for b in benchmarks}
    clock = time.perf_counter_ns
    for index, size in enumerate(block_sizes(tier.samples, tier.blocks)):
        shift = index % len(benchmarks) if benchmarks else 0
        for bench in [*benchmarks[shift:], *benchmarks[:shift]]:
            fn, out = bench.fn, samples[bench.name]
            was_enabled = gc.isenabled()
            gc.collect()
            gc.disable()
            try:
                for _ in range(size):
                    start = clock()
                    value = fn()
                    elapsed = clock() - start
                    out.append(value.ns if isinstance(value, Reported) else elapsed)
            finally:
                if was_enabled:
                    gc.enable()
    return samples


def run_self_timed(
    title: str, benchmarks: Sequence[Benchmark], tier: Tier
) -> dict[str, BenchResult]:
    """Measures a tier, prints its table, and returns its results by benchmark name."""
    started = time.monotonic()
    samples = measure_self_timed(benchmarks, tier)
    results = build_results(benchmarks, samples, keep_raw=True)
    report = GroupReport(title, {}, tier.config(), results, round(time.monotonic() - started, 3))
    print(format_table(report))
    print(f"({report.elapsed_seconds:.1f} s; self-timed, stored in the params of the group)\n")
    return {r.benchmark.name: r for r in results}


def as_params(result: BenchResult, tier: Tier) -> dict[str, Any]:
    """A self-timed result as JSON-ready metadata (summary, ratios, sizing and raw samples)."""
    entry = result.as_dict()
    entry["tier"] = {"samples": tier.samples, "warmup": tier.warmup, "blocks": tier.blocks}
    return entry
