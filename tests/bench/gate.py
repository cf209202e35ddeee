"""The benchmark regression gate: ratios of a run against `bench-results/baseline.json`.

Only ratios are compared, never absolute times: every metric is a subject's percentile over
the same percentile of one of its anchors, measured in the same run (`harness`), so a
slower or busier machine moves subject and anchor together.

Metrics. In each group report (`<out>/<group>.json`), every benchmark that names anchors
gives one ratio per anchor and per percentile (P50, P95, P99, P99.9), computed from the two
summaries. Self-timed tiers stored in a benchmark's params (`selftimed.as_params` entries,
grouped in a dict or a list) give theirs the same way, anchors looked up in the same tier.
A benchmark that another one of its tier names as an anchor is a floor (a bare grpcio
echo, a memcpy), not a product figure: its own ratios are not gated. Keys read
`<group>: <subject> vs <anchor> @<percentile>`, plus ` [<owner>.<path>]` for self-timed
ones.

Gate. A metric regresses when its ratio exceeds `baseline * (1 + tolerance)`; lower is
better for every ratio (they are ratios of times). A metric of the baseline that the run
does not produce is reported as missing and fails the gate too (a gate that passes when
its metric vanished is no gate); a metric the baseline does not know is listed, not gated.
Tolerances are per metric, in the baseline: when measuring it, each is the default of its
percentile (`DEFAULT_TOLERANCE`) or, if larger, twice the relative spread seen between the
baseline's runs. A percentile is gated only when enough samples lie beyond it
(`MIN_SAMPLES_BEYOND`): 10 for the P50 (from 20 samples), 50 for a tail (P95 from 1,000
samples, P99 from 5,000, P99.9 from 50,000). With fewer, a tail is one of the last few
samples, i.e. whatever else a loaded machine did at that moment (a smoke-sized run's P95
of 300 samples moved 5x between runs here). Such metrics are recorded and reported, not
gated (tolerance null).

Commands (see `make bench-check` and `make bench-baseline`):
  python -m tests.bench.gate check --baseline FILE --results DIR
  python -m tests.bench.gate baseline --results DIR [DIR ...] --out FILE --command CMD
  python -m tests.bench.gate run-args --baseline FILE    (the `python -m tests.bench` args)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BASELINE_FORMAT = "tensorwasm-bench-baseline/1"
PERCENTILES = ("p50", "p95", "p99", "p99_9")
# Relative headroom over the baseline ratio before a metric counts as regressed. Generous,
# for a loaded shared machine: a P50 ratio may rise by half, a P95 double, a P99 rise 2.5x,
# a P99.9 triple.
DEFAULT_TOLERANCE: Mapping[str, float] = {"p50": 0.5, "p95": 1.0, "p99": 1.5, "p99_9": 2.0}
PERCENT = {"p50": 50.0, "p95": 95.0, "p99": 99.0, "p99_9": 99.9}
SPREAD_FACTOR = 2.0
MIN_SAMPLES_BEYOND: Mapping[str, int] = {"p50": 10, "p95": 50, "p99": 50, "p99_9": 50}


@dataclass(frozen=True)
class Ratio:
    """One metric of a run: the ratio, and the fewer of the two sample counts behind it."""

    value: float
    samples: int


def gated(percentile: str, samples: int) -> bool:
    """True when at least MIN_SAMPLES_BEYOND[percentile] of `samples` lie beyond it."""
    beyond = samples * (100.0 - PERCENT[percentile]) / 100.0
    return beyond >= MIN_SAMPLES_BEYOND[percentile] - 1e-9


class GateError(Exception):
    """The inputs cannot be compared (a missing file, a wrong format)."""


# --- metrics of a run -------------------------------------------------------------------------


def _is_entry(value: object) -> bool:
    return isinstance(value, dict) and "name" in value and "p50" in value and "ratios" in value


def _ratios(
    group: str, entries: Sequence[Mapping[str, Any]], suffix: str = ""
) -> Iterator[tuple[str, Ratio]]:
    """Per-percentile ratios of every non-floor entry against each of its anchors."""
    by_name: dict[str, Mapping[str, Any]] = {}
    duplicates: set[str] = set()
    for entry in entries:
        if entry["name"] in by_name:
            duplicates.add(entry["name"])
        by_name[entry["name"]] = entry
    floors = {a["anchor"] for e in entries for a in e.get("ratios", ())}
    for entry in entries:
        if entry["name"] in floors:
            continue
        for anchor_name in (a["anchor"] for a in entry.get("ratios", ())):
            anchor = by_name.get(anchor_name)
            if anchor is None or anchor_name in duplicates or entry["name"] in duplicates:
                continue  # not in this tier, or ambiguous: nothing honest to compute
            samples = min(int(entry["n"]), int(anchor["n"]))
            for p in PERCENTILES:
                if anchor.get(p):
                    key = f"{group}: {entry['name']} vs {anchor_name} @{p}{suffix}"
                    yield key, Ratio(entry[p] / anchor[p], samples)


def _tiers(value: object, path: str) -> Iterator[tuple[str, list[Mapping[str, Any]]]]:
    """The self-timed tiers (lists of entries) anywhere under `value`, with their path."""
    if isinstance(value, dict):
        entries = [v for v in value.values() if _is_entry(v)]
        if entries:
            yield path, entries
        for key, child in value.items():
            if not _is_entry(child):
                yield from _tiers(child, f"{path}.{key}")
    elif isinstance(value, list):
        entries = [v for v in value if _is_entry(v)]
        if entries:
            yield path, entries
        for child in value:
            if not _is_entry(child):
                yield from _tiers(child, path)


def report_metrics(report: Mapping[str, Any]) -> dict[str, Ratio]:
    """Every gated ratio of one group report (`<out>/<group>.json`)."""
    group = report["group"]
    results = report["results"]
    metrics = dict(_ratios(group, results))
    for result in results:
        for path, entries in _tiers(result.get("params", {}), result["name"]):
            metrics.update(_ratios(group, entries, f" [{path}]"))
    return metrics


def run_metrics(results_dir: Path, groups: Sequence[str]) -> dict[str, Ratio]:
    """The metrics of the named groups' reports in `results_dir` (a missing report
    contributes nothing: its metrics are then reported missing)."""
    metrics: dict[str, Ratio] = {}
    for name in groups:
        path = results_dir / f"{name}.json"
        if path.exists():
            metrics.update(report_metrics(json.loads(path.read_text())))
    return metrics


# --- comparison -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """One metric's comparison."""

    key: str
    status: str  # "ok", "improved", "regressed", "missing", "new", "reported"
    baseline: float | None
    current: float | None
    tolerance: float | None

    @property
    def limit(self) -> float | None:
        """The highest ratio that still passes."""
        if self.baseline is None or self.tolerance is None:
            return None
        return self.baseline * (1 + self.tolerance)

    def line(self) -> str:
        """A human line."""
        base = "-" if self.baseline is None else f"{self.baseline:.4g}"
        now = "-" if self.current is None else f"{self.current:.4g}"
        limit = "not gated" if self.limit is None else f"limit {self.limit:.4g}"
        return f"{self.status.upper():9} {self.key}: {now} (baseline {base}, {limit})"


def compare(baseline: Mapping[str, Any], current: Mapping[str, Ratio]) -> list[Verdict]:
    """Each baseline metric against the run's, then the run's metrics the baseline lacks."""
    verdicts = []
    for key, spec in sorted(baseline["metrics"].items()):
        found = current.get(key)
        value = None if found is None else found.value
        tolerance = spec.get("tolerance")
        base = float(spec["baseline"])
        if value is None:
            status = "missing"
        elif tolerance is None:
            status = "reported"
        elif value > base * (1 + tolerance):
            status = "regressed"
        elif value < base / (1 + tolerance):
            status = "improved"  # past the tolerance downwards: re-baseline to keep it
        else:
            status = "ok"
        verdicts.append(Verdict(key, status, base, value, tolerance))
    for key in sorted(set(current) - set(baseline["metrics"])):
        verdicts.append(Verdict(key, "new", None, current[key].value, None))
    return verdicts


def failed(verdicts: Sequence[Verdict]) -> list[Verdict]:
    """The verdicts that fail the gate: regressed or missing metrics."""
    return [v for v in verdicts if v.status in ("regressed", "missing")]


# --- baseline ---------------------------------------------------------------------------------


def tolerance_for(percentile: str, observed: Sequence[float], samples: int) -> float | None:
    """None when the percentile has too few samples beyond it to gate; else its default,
    or twice the runs' relative spread when that is larger."""
    if not gated(percentile, samples):
        return None
    spread = max(observed) / min(observed) - 1 if min(observed) > 0 else 0.0
    return round(max(DEFAULT_TOLERANCE[percentile], SPREAD_FACTOR * spread), 3)


def build_baseline(
    runs: Sequence[Path], groups: Sequence[str], *, command: str, run_args: Sequence[str], note: str
) -> dict[str, Any]:
    """A baseline from one or more result folders of the same command: per metric the
    median ratio and its tolerance; metrics that not every run produced are left out."""
    per_run = [run_metrics(run, groups) for run in runs]
    common = set(per_run[0]).intersection(*per_run[1:]) if per_run else set()
    metrics = {}
    for key in sorted(common):
        observed = [m[key].value for m in per_run]
        samples = min(m[key].samples for m in per_run)
        percentile = key.rsplit("@", 1)[1].split(" ", 1)[0]
        metrics[key] = {
            "baseline": round(statistics.median(observed), 4),
            "tolerance": tolerance_for(percentile, observed, samples),
            "observed": [round(v, 4) for v in observed],
            "samples": samples,
        }
    return {
        "format": BASELINE_FORMAT,
        "command": command,
        "run_args": list(run_args),
        "groups": list(groups),
        "runs": len(runs),
        "environment": _environment(runs, groups, note),
        "metrics": metrics,
    }


def _environment(runs: Sequence[Path], groups: Sequence[str], note: str) -> dict[str, Any]:
    """The machine of the runs (first report's header) and each report's load average."""
    headers = []
    for run in runs:
        for name in groups:
            path = run / f"{name}.json"
            if path.exists():
                headers.append((name, json.loads(path.read_text())["header"]))
    first = headers[0][1] if headers else {}
    keep = ("git_commit", "git_dirty", "python_version", "platform", "cpu_model", "cpu_count")
    return {
        "note": note,
        **{k: first.get(k) for k in keep},
        "cpus_usable": first.get("cpus_usable"),
        "packages": first.get("packages"),
        "timestamps_utc": sorted({h.get("timestamp_utc", "") for _, h in headers}),
        "loadavg_1m": [round(h["loadavg_1m"], 2) for _, h in headers if h.get("loadavg_1m")],
    }


def load_baseline(path: Path) -> dict[str, Any]:
    """The baseline file, checked for its format."""
    try:
        baseline: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GateError(f"cannot read the baseline {path}: {exc}") from None
    if baseline.get("format") != BASELINE_FORMAT or not isinstance(baseline.get("metrics"), dict):
        raise GateError(f"{path} is not a {BASELINE_FORMAT} file")
    return baseline


# --- command line -----------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> int:
    baseline = load_baseline(args.baseline)
    if not args.results.is_dir():
        raise GateError(f"no results folder {args.results}")
    verdicts = compare(baseline, run_metrics(args.results, baseline["groups"]))
    order = {"regressed": 0, "missing": 1, "improved": 2, "ok": 3, "reported": 4, "new": 5}
    for verdict in sorted(verdicts, key=lambda v: (order[v.status], v.key)):
        if args.verbose or verdict.status not in ("ok", "reported", "new"):
            print(verdict.line())
    counts = {s: sum(v.status == s for v in verdicts) for s in order}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    bad = failed(verdicts)
    print(f"bench-check: {'FAILED' if bad else 'passed'} ({summary})")
    if counts["improved"]:
        print("bench-check: improvements past their tolerance: re-baseline to keep them")
    return 1 if bad else 0


def _baseline(args: argparse.Namespace) -> int:
    groups = [g for g in args.groups.split(",") if g]
    for run in args.results:
        if not run.is_dir():
            raise GateError(f"no results folder {run}")
    baseline = build_baseline(
        args.results, groups, command=args.command, run_args=args.run_args.split(), note=args.note
    )
    if not baseline["metrics"]:
        raise GateError("the runs produced no common metric")
    args.out.write_text(json.dumps(baseline, indent=2) + "\n")
    print(f"{args.out}: {len(baseline['metrics'])} metrics from {len(args.results)} run(s)")
    return 0


def _run_args(args: argparse.Namespace) -> int:
    baseline = load_baseline(args.baseline)
    print(" ".join([*baseline["run_args"], "--groups", ",".join(baseline["groups"])]))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`check`: 0 passed, 1 regressed or missing; `baseline`, `run-args`; 2 bad input."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench.gate", description=__doc__)
    commands = parser.add_subparsers(dest="command_name", required=True)
    check = commands.add_parser("check", help="compare a run's ratios with the baseline")
    check.add_argument("--baseline", type=Path, required=True)
    check.add_argument("--results", type=Path, required=True, help="the run's output folder")
    check.add_argument("--verbose", action="store_true", help="also list passing metrics")
    check.set_defaults(handler=_check)
    base = commands.add_parser("baseline", help="write a baseline from one or more runs")
    base.add_argument("--results", type=Path, nargs="+", required=True)
    base.add_argument("--groups", required=True, help="comma list of the gated groups")
    base.add_argument("--out", type=Path, required=True)
    base.add_argument("--command", required=True, help="the command that made the runs")
    base.add_argument("--run-args", default="", help="the tests.bench args the check reuses")
    base.add_argument("--note", default="", help="environment disclosure (load, sharing)")
    base.set_defaults(handler=_baseline)
    run_args = commands.add_parser("run-args", help="print the tests.bench args of the check")
    run_args.add_argument("--baseline", type=Path, required=True)
    run_args.set_defaults(handler=_run_args)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        code: int = args.handler(args)
    except GateError as exc:
        print(f"bench-check: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    raise SystemExit(main())
