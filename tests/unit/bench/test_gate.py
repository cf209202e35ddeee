"""Unit tests for tests.bench.gate: the metrics of a run, the baseline, the comparison.

The reports are written by the harness itself (`build_results`, `GroupReport`,
`write_report`) from fixed samples, so the gate reads the format `make bench` writes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.bench import gate, harness
from tests.bench.harness import Benchmark, RunConfig
from tests.bench.selftimed import Tier, as_params

CONFIG = RunConfig(samples=100, warmup=0, blocks=1)
N = 100


def _noop() -> None:
    return None


def _samples(p50: int, tail: int | None = None) -> list[int]:
    """N samples whose P50, P95 and P99 are `p50` and whose P99.9 (the max) is `tail`."""
    return [p50] * (N - 1) + [p50 if tail is None else tail]


def _write_run(
    out: Path,
    subject_ns: int,
    *,
    tail_ns: int | None = None,
    with_subject: bool = True,
    tier_subject_ns: int = 300,
) -> Path:
    """One `demo` group report: a floor, a relayed floor anchored on it, a subject
    anchored on both, and a self-timed tier in the subject's params."""
    tier = Tier(samples=N, warmup=0, blocks=1)
    tier_benchmarks = [
        Benchmark("tier/anchor", _noop),
        Benchmark("tier/subject", _noop, anchors=("tier/anchor",)),
    ]
    tier_results = harness.build_results(
        tier_benchmarks,
        {"tier/anchor": _samples(100), "tier/subject": _samples(tier_subject_ns)},
        keep_raw=False,
    )
    params = {"first": {r.benchmark.name: as_params(r, tier) for r in tier_results}}
    benchmarks = [
        Benchmark("floor/one_hop", _noop),
        Benchmark("floor/two_hop", _noop, anchors=("floor/one_hop",)),
    ]
    samples = {"floor/one_hop": _samples(100), "floor/two_hop": _samples(200)}
    if with_subject:
        benchmarks.append(
            Benchmark(
                "demo/subject", _noop, anchors=("floor/two_hop", "floor/one_hop"), params=params
            )
        )
        samples["demo/subject"] = _samples(subject_ns, tail_ns)
    results = harness.build_results(benchmarks, samples, keep_raw=False)
    report = harness.GroupReport("demo", {"loadavg_1m": 1.5}, CONFIG, results, 0.1)
    out.mkdir(parents=True, exist_ok=True)
    harness.write_report(report, out)
    return out


def _baseline(tmp_path: Path, runs: Sequence[Path]) -> Path:
    path = tmp_path / "baseline.json"
    code = gate.main(
        [
            "baseline",
            "--results",
            *map(str, runs),
            "--groups",
            "demo",
            "--out",
            str(path),
            "--command",
            "python -m tests.bench --groups demo",
            "--run-args=--quick",
            "--note",
            "unit test",
        ]
    )
    assert code == 0
    return path


def _check(baseline: Path, run: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = gate.main(["check", "--baseline", str(baseline), "--results", str(run)])
    return code, capsys.readouterr().out


def _statuses(baseline: Path, run: Path) -> Mapping[str, str]:
    verdicts = gate.compare(gate.load_baseline(baseline), gate.run_metrics(run, ["demo"]))
    return {v.key: v.status for v in verdicts}


SUBJECT_P50 = "demo: demo/subject vs floor/one_hop @p50"
TIER_P50 = "demo: tier/subject vs tier/anchor @p50 [demo/subject.first]"


def test_metrics_are_ratios_of_non_floor_benchmarks_at_each_percentile(tmp_path: Path) -> None:
    run = _write_run(tmp_path / "run", 300, tail_ns=900)
    metrics = {k: m.value for k, m in gate.run_metrics(run, ["demo"]).items()}
    assert metrics[SUBJECT_P50] == pytest.approx(3.0)
    assert metrics["demo: demo/subject vs floor/two_hop @p95"] == pytest.approx(1.5)
    assert metrics["demo: demo/subject vs floor/one_hop @p99_9"] == pytest.approx(9.0)
    assert metrics[TIER_P50] == pytest.approx(3.0)
    assert {m.samples for m in gate.run_metrics(run, ["demo"]).values()} == {N}
    # floor/two_hop is an anchor of the subject: a floor, whose own ratio is not gated.
    assert not [k for k in metrics if "floor/two_hop vs" in k]
    assert len(metrics) == 2 * 4 + 4


def test_an_unchanged_run_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    baseline = _baseline(tmp_path, [_write_run(tmp_path / "base", 300)])
    code, out = _check(baseline, _write_run(tmp_path / "run", 300), capsys)
    assert code == 0
    assert "bench-check: passed" in out


def test_a_regressed_ratio_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    baseline = _baseline(tmp_path, [_write_run(tmp_path / "base", 300)])
    run = _write_run(tmp_path / "run", 600)  # 2x at every percentile, past P50's +50%
    assert _statuses(baseline, run)[SUBJECT_P50] == "regressed"
    code, out = _check(baseline, run, capsys)
    assert code == 1
    assert f"REGRESSED {SUBJECT_P50}: 6 (baseline 3, limit 4.5)" in out
    assert "bench-check: FAILED" in out


def test_a_regression_within_tolerance_passes(tmp_path: Path) -> None:
    baseline = _baseline(tmp_path, [_write_run(tmp_path / "base", 300)])
    run = _write_run(tmp_path / "run", 420)  # P50 ratio 4.2 <= 3 * 1.5
    assert _statuses(baseline, run)[SUBJECT_P50] == "ok"


def test_a_regressed_self_timed_ratio_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = _baseline(tmp_path, [_write_run(tmp_path / "base", 300)])
    code, out = _check(baseline, _write_run(tmp_path / "run", 300, tier_subject_ns=900), capsys)
    assert code == 1
    assert f"REGRESSED {TIER_P50}" in out


def test_an_improved_ratio_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    baseline = _baseline(tmp_path, [_write_run(tmp_path / "base", 300)])
    run = _write_run(tmp_path / "run", 120)
    assert _statuses(baseline, run)[SUBJECT_P50] == "improved"
    code, out = _check(baseline, run, capsys)
    assert code == 0
    assert "bench-check: passed" in out
    assert "re-baseline" in out


def test_a_missing_metric_is_reported_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = _baseline(tmp_path, [_write_run(tmp_path / "base", 300)])
    code, out = _check(baseline, _write_run(tmp_path / "run", 300, with_subject=False), capsys)
    assert code == 1
    assert f"MISSING   {SUBJECT_P50}: - (baseline 3, limit 4.5)" in out
    assert f"MISSING   {TIER_P50}" in out  # its tier lived in the subject's params
    assert "12 missing" in out


def test_a_missing_group_report_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = _baseline(tmp_path, [_write_run(tmp_path / "base", 300)])
    (tmp_path / "empty").mkdir()
    code, out = _check(baseline, tmp_path / "empty", capsys)
    assert code == 1
    assert "12 missing" in out


def test_a_metric_the_baseline_lacks_is_listed_not_gated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _baseline(tmp_path, [_write_run(tmp_path / "base", 300)])
    data = json.loads(path.read_text())
    del data["metrics"][SUBJECT_P50]
    path.write_text(json.dumps(data))
    run = _write_run(tmp_path / "run", 300)
    assert _statuses(path, run)[SUBJECT_P50] == "new"
    code, out = _check(path, run, capsys)
    assert code == 0
    assert "1 new" in out


def test_a_tail_with_too_few_samples_beyond_it_is_recorded_but_not_gated(
    tmp_path: Path,
) -> None:
    # 100 samples: P50 is gated; P95, P99 and P99.9 have fewer than 50 samples beyond them.
    baseline = _baseline(tmp_path, [_write_run(tmp_path / "base", 300, tail_ns=300)])
    data = json.loads(baseline.read_text())
    assert data["metrics"]["demo: demo/subject vs floor/one_hop @p95"]["tolerance"] is None
    run = _write_run(tmp_path / "run", 300, tail_ns=30_000)
    statuses = _statuses(baseline, run)
    assert statuses["demo: demo/subject vs floor/one_hop @p99_9"] == "reported"
    assert statuses["demo: demo/subject vs floor/one_hop @p95"] == "reported"
    assert statuses[SUBJECT_P50] == "ok"


@pytest.mark.parametrize(
    ("percentile", "samples", "expected"),
    [
        ("p50", 20, True),
        ("p50", 19, False),
        ("p95", 1000, True),
        ("p95", 300, False),
        ("p99", 5000, True),
        ("p99", 4999, False),
        ("p99_9", 50_000, True),
        ("p99_9", 10_000, False),
    ],
)
def test_gated_needs_enough_samples_beyond_the_percentile(
    percentile: str, samples: int, expected: bool
) -> None:
    assert gate.gated(percentile, samples) is expected


def test_baseline_takes_the_median_and_widens_tolerance_to_the_runs_spread(
    tmp_path: Path,
) -> None:
    runs = [_write_run(tmp_path / f"run{i}", ns) for i, ns in enumerate((300, 400, 360))]
    data: dict[str, Any] = json.loads(_baseline(tmp_path, runs).read_text())
    metric = data["metrics"][SUBJECT_P50]
    assert metric["baseline"] == pytest.approx(3.6)
    assert metric["observed"] == pytest.approx([3.0, 4.0, 3.6])
    # spread 4/3 - 1 = 0.333: twice that (0.667) is above P50's default of 0.5
    assert metric["tolerance"] == pytest.approx(0.667)
    assert data["run_args"] == ["--quick"]
    assert data["groups"] == ["demo"]
    assert data["environment"]["note"] == "unit test"
    assert data["environment"]["loadavg_1m"] == [1.5, 1.5, 1.5]


@pytest.mark.parametrize(
    ("percentile", "observed", "samples", "expected"),
    [
        ("p50", [2.0], 300, 0.5),
        ("p95", [2.0, 2.1], 1000, 1.0),
        ("p99", [1.0, 3.0], 5000, 4.0),
        ("p99", [1.0, 3.0], 1000, None),
        ("p99_9", [1.0], 50_000, 2.0),
    ],
)
def test_tolerance_for(
    percentile: str, observed: list[float], samples: int, expected: float | None
) -> None:
    assert gate.tolerance_for(percentile, observed, samples) == expected


def test_run_args_prints_the_baseline_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = _baseline(tmp_path, [_write_run(tmp_path / "base", 300)])
    capsys.readouterr()
    assert gate.main(["run-args", "--baseline", str(baseline)]) == 0
    assert capsys.readouterr().out.strip() == "--quick --groups demo"


def test_a_file_that_is_not_a_baseline_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bogus = tmp_path / "bogus.json"
    bogus.write_text(json.dumps({"format": "other", "metrics": {}}))
    assert gate.main(["check", "--baseline", str(bogus), "--results", str(tmp_path)]) == 2
    assert "is not a tensorwasm-bench-baseline/1 file" in capsys.readouterr().err
    assert gate.main(["check", "--baseline", str(tmp_path / "absent.json"), "--results", "."]) == 2
