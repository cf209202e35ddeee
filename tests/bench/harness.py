"""Benchmark harness: group registry, interleaved timing, nearest-rank statistics, JSON reports.

A *group* is a generator function registered with `@group("name")`. It sets up what its
benchmarks need (processes, channels), yields one sequence of `Benchmark`s, and tears down in a
`finally`/`with` when the harness resumes it — so cleanup runs even when measuring fails.

A *benchmark* is a zero-argument callable timed one call at a time with `time.perf_counter_ns`
after `warmup` untimed calls. A benchmark may name *anchors*: other benchmarks of the same group,
measured in the same run, that are its floor (e.g. a bare grpcio echo for a gateway call). The
report carries `ratio_p50` and `ratio_p99` against the first anchor and a `ratios` list against
each one.

Drift cancellation: machine state drifts during a run (CPU frequency, thermal state, other
tenants, background compaction), and a subject measured entirely after its anchor would absorb
that drift into the ratio. So every benchmark of a group is measured in `blocks` alternating
blocks of about samples/blocks calls each: block k runs the group's benchmarks in their declared
order rotated by k, so each benchmark samples every phase of the run and no benchmark always
runs first (or right after the same neighbour). The garbage collector is collected between
blocks and disabled inside them, as `timeit` does, so a collection does not land on an
arbitrary sample.

Statistics use the nearest-rank percentile: the p-th percentile of n sorted samples is the
sample at 1-based rank ceil(p/100 * n), computed exactly (p is taken from its decimal string, so
99.9 of 1000 is rank 999, not 1000). Standard deviation is the sample (n-1) one; the coefficient
of variation is stddev/mean.

The harness only reports: no threshold, no pass/fail on timing.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.metadata
import json
import math
import os
import pkgutil
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
UNIT = "ns"
REPORT_FORMAT = "tensorwasm-bench/1"
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50),
    ("p95", 95),
    ("p99", 99),
    ("p99_9", 99.9),
)
VERSIONED_PACKAGES = ("grpcio", "wasmtime", "protobuf")

Clock = Callable[[], int]


# --- statistics ---------------------------------------------------------------------------------


def nearest_rank(sorted_samples: Sequence[float], percentile: float) -> float:
    """The nearest-rank percentile of ascending samples: the value at rank ceil(p/100 * n)."""
    if not sorted_samples:
        raise ValueError("no samples: a percentile of an empty sequence is undefined")
    if not 0 < percentile <= 100:  # also rejects NaN
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}")
    exact = Fraction(str(percentile)) if isinstance(percentile, float) else Fraction(percentile)
    rank = math.ceil(exact * len(sorted_samples) / 100)
    return sorted_samples[rank - 1]


@dataclass(frozen=True)
class Summary:
    """The statistics of one benchmark's samples (all in `unit`)."""

    n: int
    p50: float
    p95: float
    p99: float
    p99_9: float
    mean: float
    min: float
    max: float
    stddev: float
    cv: float
    unit: str = UNIT

    def as_dict(self) -> dict[str, Any]:
        """The fields, in declaration order, for the JSON report."""
        return {
            "unit": self.unit,
            "n": self.n,
            "p50": self.p50,
            "p95": self.p95,
            "p99": self.p99,
            "p99_9": self.p99_9,
            "mean": self.mean,
            "min": self.min,
            "max": self.max,
            "stddev": self.stddev,
            "cv": self.cv,
        }


def summarize(samples: Sequence[float], unit: str = UNIT) -> Summary:
    """Nearest-rank percentiles, mean, extremes, sample stddev and CV (0 when the mean is 0)."""
    if not samples:
        raise ValueError("no samples: cannot summarize an empty sequence")
    ordered = sorted(samples)
    mean = statistics.fmean(ordered)
    stddev = statistics.stdev(ordered) if len(ordered) > 1 else 0.0
    p50, p95, p99, p99_9 = (nearest_rank(ordered, p) for _, p in PERCENTILES)
    return Summary(
        n=len(ordered),
        p50=p50,
        p95=p95,
        p99=p99,
        p99_9=p99_9,
        mean=mean,
        min=ordered[0],
        max=ordered[-1],
        stddev=stddev,
        cv=stddev / mean if mean else 0.0,
        unit=unit,
    )


def ratio(subject: float, anchor: float) -> float | None:
    """subject/anchor, or None when the anchor is 0 (no meaningful ratio)."""
    return subject / anchor if anchor else None


# --- benchmarks and groups ----------------------------------------------------------------------


@dataclass(frozen=True)
class Benchmark:
    """A named callable to time; `anchors` name floors measured in the same group."""

    name: str
    fn: Callable[[], object]
    anchors: tuple[str, ...] = ()
    description: str = ""
    params: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    """How much to measure."""

    samples: int = 2000
    warmup: int = 200
    blocks: int = 10
    quick: bool = False
    raw_samples: bool = False

    def __post_init__(self) -> None:
        if self.samples < 1 or self.blocks < 1 or self.warmup < 0:
            raise ValueError(f"invalid run config: {self}")

    @classmethod
    def quick_config(cls, *, raw_samples: bool = False) -> RunConfig:
        """The CI smoke sizing: ~300 samples, short warm-up."""
        return cls(samples=300, warmup=50, blocks=10, quick=True, raw_samples=raw_samples)


GroupFn = Callable[[RunConfig], Iterator[Sequence[Benchmark]]]
GroupFactory = Callable[[RunConfig], contextlib.AbstractContextManager[Sequence[Benchmark]]]

REGISTRY: dict[str, GroupFactory] = {}
GROUPS_PACKAGE = "tests.bench.groups"


def group(name: str) -> Callable[[GroupFn], GroupFn]:
    """Registers a generator that sets up, yields its benchmarks once, then tears down."""

    def register(fn: GroupFn) -> GroupFn:
        if name in REGISTRY:
            raise ValueError(f"benchmark group {name!r} is registered twice")
        REGISTRY[name] = contextlib.contextmanager(fn)
        return fn

    return register


def load_groups() -> dict[str, GroupFactory]:
    """Imports every module of `tests.bench.groups` (each registers its groups) and the registry."""
    package = importlib.import_module(GROUPS_PACKAGE)
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{GROUPS_PACKAGE}.{module.name}")
    return REGISTRY


def validate(benchmarks: Sequence[Benchmark]) -> None:
    """Names are unique, and every anchor is another benchmark of the same group."""
    names = [b.name for b in benchmarks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate benchmark names: {duplicates}")
    for bench in benchmarks:
        for anchor in bench.anchors:
            if anchor == bench.name:
                raise ValueError(f"{bench.name} names itself as its anchor")
            if anchor not in names:
                raise ValueError(f"{bench.name}: anchor {anchor!r} is not in this group")


# --- measurement --------------------------------------------------------------------------------


def block_sizes(samples: int, blocks: int) -> list[int]:
    """`samples` split into at most `blocks` near-equal positive blocks (earlier ones larger)."""
    count = min(samples, blocks)
    base, extra = divmod(samples, count)
    return [base + (1 if i < extra else 0) for i in range(count)]


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def measure(
    benchmarks: Sequence[Benchmark], config: RunConfig, clock: Clock = time.perf_counter_ns
) -> dict[str, list[int]]:
    """Warms every benchmark up, then times them in rotating interleaved blocks."""
    validate(benchmarks)
    for bench in benchmarks:
        fn = bench.fn
        for _ in range(config.warmup):
            fn()
    samples: dict[str, list[int]] = {b.name: [] for b in benchmarks}
    for index, size in enumerate(block_sizes(config.samples, config.blocks)):
        shift = index % len(benchmarks) if benchmarks else 0
        for bench in [*benchmarks[shift:], *benchmarks[:shift]]:
            fn, out = bench.fn, samples[bench.name]
            with _gc_paused():
                for _ in range(size):
                    start = clock()
                    fn()
                    out.append(clock() - start)
    return samples


def timer_overhead_ns(clock: Clock = time.perf_counter_ns, rounds: int = 1000) -> int:
    """The smallest difference between two back-to-back clock reads."""
    best = sys.maxsize
    for _ in range(rounds):
        start = clock()
        best = min(best, clock() - start)
    return best


# --- reports ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchResult:
    """One benchmark's summary and its ratios against its anchors."""

    benchmark: Benchmark
    summary: Summary
    ratios: tuple[tuple[str, float | None, float | None], ...] = ()
    samples: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The JSON form; `anchor`/`ratio_*` are against the first anchor."""
        first = self.ratios[0] if self.ratios else (None, None, None)
        entry: dict[str, Any] = {
            "name": self.benchmark.name,
            "description": self.benchmark.description,
            **self.summary.as_dict(),
            "anchor": first[0],
            "ratio_p50": first[1],
            "ratio_p99": first[2],
            "ratios": [
                {"anchor": a, "ratio_p50": r50, "ratio_p99": r99} for a, r50, r99 in self.ratios
            ],
            "params": dict(self.benchmark.params),
        }
        if self.samples:
            entry["samples"] = list(self.samples)
        return entry


@dataclass(frozen=True)
class GroupReport:
    """A group's results plus the environment header."""

    group: str
    header: dict[str, Any]
    config: RunConfig
    results: tuple[BenchResult, ...]
    elapsed_seconds: float

    def as_dict(self) -> dict[str, Any]:
        """The JSON document written to `<out>/<group>.json`."""
        return {
            "format": REPORT_FORMAT,
            "group": self.group,
            "header": self.header,
            "config": {
                "samples": self.config.samples,
                "warmup": self.config.warmup,
                "blocks": self.config.blocks,
                "quick": self.config.quick,
                "interleaving": "rotating blocks",
                "gc": "collected between blocks, disabled inside",
                "percentile_method": "nearest-rank",
                "elapsed_seconds": self.elapsed_seconds,
            },
            "results": [r.as_dict() for r in self.results],
        }


def build_results(
    benchmarks: Sequence[Benchmark], samples: Mapping[str, Sequence[int]], *, keep_raw: bool
) -> tuple[BenchResult, ...]:
    """Summaries in declaration order, with p50/p99 ratios against each named anchor."""
    summaries = {b.name: summarize(samples[b.name]) for b in benchmarks}
    results = []
    for bench in benchmarks:
        own = summaries[bench.name]
        ratios = tuple(
            (a, ratio(own.p50, summaries[a].p50), ratio(own.p99, summaries[a].p99))
            for a in bench.anchors
        )
        raw = tuple(samples[bench.name]) if keep_raw else ()
        results.append(BenchResult(bench, own, ratios, raw))
    return tuple(results)


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Processor", "cpu model"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment_header() -> dict[str, Any]:
    """Where and with what the numbers were taken."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    changes = _git("status", "--porcelain", "--untracked-files=no")  # tracked files only
    return {
        "timestamp_utc": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "git_commit": _git("rev-parse", "HEAD") or "unknown",
        "git_dirty": None if changes is None else bool(changes),
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(affinity) if affinity is not None else os.cpu_count(),
        "loadavg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "packages": {name: _package_version(name) for name in VERSIONED_PACKAGES},
        "clock": "time.perf_counter_ns",
        "timer_overhead_ns": timer_overhead_ns(),
    }


def run_group(name: str, factory: GroupFactory, config: RunConfig) -> GroupReport:
    """Sets the group up, measures its benchmarks, tears it down (also on error)."""
    header = environment_header()
    started = time.monotonic()
    with factory(config) as benchmarks:
        samples = measure(benchmarks, config)
        results = build_results(benchmarks, samples, keep_raw=config.raw_samples)
    return GroupReport(name, header, config, results, round(time.monotonic() - started, 3))


def write_report(report: GroupReport, out_dir: Path) -> Path:
    """Writes `<out_dir>/<group>.json` atomically and returns its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{report.group}.json"
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(json.dumps(report.as_dict(), indent=2, allow_nan=False) + "\n")
    os.replace(temp, path)
    return path


def _us(value_ns: float) -> str:
    return f"{value_ns / 1000:.1f}"


def _times(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def format_table(report: GroupReport) -> str:
    """A compact human table: latencies in µs, ratios against each anchor on its own line."""
    rows = [("name", "n", "p50", "p95", "p99", "p99.9", "vs anchor (p50 / p99)")]
    for result in report.results:
        s = result.summary
        stats = (str(s.n), _us(s.p50), _us(s.p95), _us(s.p99), _us(s.p99_9))
        vs = [f"{_times(r50)} / {_times(r99)}  {a}" for a, r50, r99 in result.ratios] or [""]
        rows.append((result.benchmark.name, *stats, vs[0]))
        rows.extend(("", "", "", "", "", "", more) for more in vs[1:])
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = [f"{report.group}  (latency in µs; {report.config.blocks} interleaved blocks)"]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:6], widths[1:], strict=True)
        ]
        lines.append("  ".join([*cells, row[6]]).rstrip())
    return "\n".join(lines)
