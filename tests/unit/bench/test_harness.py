"""Unit tests for tests.bench.harness: nearest-rank percentiles, summaries, blocks, reports."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.bench import harness
from tests.bench.harness import Benchmark, RunConfig

# --- nearest rank -------------------------------------------------------------------------------

# The textbook example: 15, 20, 35, 40, 50.
TEXTBOOK = [15, 20, 35, 40, 50]


@pytest.mark.parametrize(
    ("percentile", "expected"),
    [(5, 15), (20, 15), (30, 20), (40, 20), (50, 35), (60, 35), (80, 40), (99.9, 50), (100, 50)],
)
def test_nearest_rank_textbook(percentile: float, expected: int) -> None:
    assert harness.nearest_rank(TEXTBOOK, percentile) == expected


@pytest.mark.parametrize(
    ("percentile", "expected"), [(50, 50), (95, 95), (99, 99), (99.9, 100), (100, 100), (0.5, 1)]
)
def test_nearest_rank_one_to_hundred(percentile: float, expected: int) -> None:
    assert harness.nearest_rank(list(range(1, 101)), percentile) == expected


@pytest.mark.parametrize(
    ("n", "percentile", "rank"),
    [(1000, 99.9, 999), (2000, 99.9, 1998), (300, 99.9, 300), (10, 99.9, 10), (100, 99, 99)],
)
def test_nearest_rank_is_exact_at_integer_boundaries(n: int, percentile: float, rank: int) -> None:
    # 99.9 / 100 * 1000 is 999.0000000000001 in binary floating point; the rank must be 999.
    assert harness.nearest_rank(list(range(1, n + 1)), percentile) == rank


def test_nearest_rank_returns_a_sample_never_an_interpolation() -> None:
    assert harness.nearest_rank([10, 20], 50) == 10
    assert harness.nearest_rank([10, 20], 50.1) == 20


def test_nearest_rank_single_sample() -> None:
    for p in (0.1, 50, 99.9, 100):
        assert harness.nearest_rank([7], p) == 7


def test_nearest_rank_rejects_empty_samples() -> None:
    with pytest.raises(ValueError, match="no samples"):
        harness.nearest_rank([], 50)


@pytest.mark.parametrize("percentile", [0, -1, 100.5, math.nan, math.inf])
def test_nearest_rank_rejects_out_of_range_percentiles(percentile: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        harness.nearest_rank([1, 2, 3], percentile)


# --- summaries ----------------------------------------------------------------------------------


def test_summarize_known_input() -> None:
    summary = harness.summarize([4, 1, 3, 2])  # unsorted on purpose
    assert (summary.n, summary.min, summary.max) == (4, 1, 4)
    assert (summary.p50, summary.p95, summary.p99, summary.p99_9) == (2, 4, 4, 4)
    assert summary.mean == 2.5
    assert summary.stddev == pytest.approx(math.sqrt(5 / 3))  # sample (n-1) stddev
    assert summary.cv == pytest.approx(math.sqrt(5 / 3) / 2.5)
    assert summary.unit == "ns"


def test_summarize_thousand_samples() -> None:
    samples = list(range(1000, 0, -1))  # 1..1000, descending
    summary = harness.summarize(samples)
    assert (summary.p50, summary.p95, summary.p99, summary.p99_9) == (500, 950, 990, 999)
    assert summary.mean == 500.5
    assert summary.stddev == pytest.approx(statistics.stdev(samples))


def test_summarize_single_sample_has_zero_spread() -> None:
    summary = harness.summarize([1234])
    assert (summary.p50, summary.p99_9, summary.mean, summary.stddev, summary.cv) == (
        1234,
        1234,
        1234,
        0.0,
        0.0,
    )


def test_summarize_all_zero_samples_has_zero_cv() -> None:
    assert harness.summarize([0, 0, 0]).cv == 0.0


def test_summarize_rejects_empty_samples() -> None:
    with pytest.raises(ValueError, match="no samples"):
        harness.summarize([])


def test_summary_dict_field_order() -> None:
    keys = list(harness.summarize([1, 2]).as_dict())
    assert keys == [
        "unit",
        "n",
        "p50",
        "p95",
        "p99",
        "p99_9",
        "mean",
        "min",
        "max",
        "stddev",
        "cv",
    ]


def test_ratio() -> None:
    assert harness.ratio(300, 100) == 3.0
    assert harness.ratio(5, 0) is None


# --- blocks and measurement ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "blocks", "expected"),
    [(2000, 10, [200] * 10), (25, 10, [3] * 5 + [2] * 5), (3, 10, [1, 1, 1]), (7, 1, [7])],
)
def test_block_sizes(samples: int, blocks: int, expected: list[int]) -> None:
    sizes = harness.block_sizes(samples, blocks)
    assert sizes == expected
    assert sum(sizes) == samples


def test_run_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="invalid run config"):
        RunConfig(samples=0)
    with pytest.raises(ValueError, match="invalid run config"):
        RunConfig(blocks=0)


def _recorder(calls: list[str], name: str) -> Benchmark:
    return Benchmark(name, lambda: calls.append(name))


def test_measure_warms_up_then_interleaves_rotating_blocks() -> None:
    calls: list[str] = []
    benches = [_recorder(calls, n) for n in ("a", "b", "c")]
    ticks = iter(range(0, 10_000, 5))  # every call takes exactly 5 ns on this clock
    config = RunConfig(samples=6, warmup=2, blocks=3)

    samples = harness.measure(benches, config, clock=lambda: next(ticks))

    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up, untimed
    blocks = ["".join(calls[6 + 6 * i : 12 + 6 * i]) for i in range(3)]
    assert blocks == ["aabbcc", "bbccaa", "ccaabb"]  # order rotated by one each block
    assert samples == {"a": [5] * 6, "b": [5] * 6, "c": [5] * 6}


def test_measure_rejects_unknown_and_self_anchors() -> None:
    config = RunConfig(samples=1, warmup=0, blocks=1)
    with pytest.raises(ValueError, match="not in this group"):
        harness.measure([Benchmark("x", lambda: None, anchors=("y",))], config)
    with pytest.raises(ValueError, match="itself"):
        harness.measure([Benchmark("x", lambda: None, anchors=("x",))], config)
    with pytest.raises(ValueError, match="duplicate"):
        harness.measure([Benchmark("x", lambda: None), Benchmark("x", lambda: None)], config)


def test_build_results_ratios_against_each_anchor() -> None:
    benches = [
        Benchmark("floor", lambda: None),
        Benchmark("two", lambda: None, anchors=("floor",)),
        Benchmark("subject", lambda: None, anchors=("floor", "two")),
    ]
    samples = {"floor": [100] * 10, "two": [200] * 9 + [400], "subject": [400] * 9 + [1200]}
    results = {r.benchmark.name: r for r in harness.build_results(benches, samples, keep_raw=False)}

    subject = results["subject"].as_dict()
    assert (subject["anchor"], subject["ratio_p50"], subject["ratio_p99"]) == ("floor", 4.0, 12.0)
    assert subject["ratios"][1] == {"anchor": "two", "ratio_p50": 2.0, "ratio_p99": 3.0}
    assert "samples" not in subject
    floor = results["floor"].as_dict()
    assert (floor["anchor"], floor["ratio_p50"], floor["ratios"]) == (None, None, [])


# --- registry, report, table --------------------------------------------------------------------


def test_group_registry_runs_teardown_and_writes_report(tmp_path: Path) -> None:
    events: list[str] = []

    def fake_group(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
        events.append("setup")
        try:
            yield [
                Benchmark("fake/floor", lambda: None),
                Benchmark("fake/subject", lambda: sum(range(50)), anchors=("fake/floor",)),
            ]
        finally:
            events.append("teardown")

    name = "unit_test_fake_group"
    harness.group(name)(fake_group)
    try:
        with pytest.raises(ValueError, match="twice"):
            harness.group(name)(fake_group)
        config = RunConfig(samples=20, warmup=1, blocks=4, raw_samples=True)
        report = harness.run_group(name, harness.REGISTRY[name], config)
    finally:
        del harness.REGISTRY[name]

    assert events == ["setup", "teardown"]
    path = harness.write_report(report, tmp_path / "out")
    assert path == tmp_path / "out" / f"{name}.json"
    document = json.loads(path.read_text())
    assert document["group"] == name
    header = document["header"]
    for key in ("timestamp_utc", "git_commit", "python_version", "platform", "cpu_model"):
        assert isinstance(header[key], str) and header[key]
    assert header["timestamp_utc"].endswith("Z")
    assert set(header["packages"]) == {"grpcio", "wasmtime", "protobuf"}
    assert isinstance(header["cpu_count"], int)
    subject = document["results"][1]
    assert (subject["name"], subject["n"], subject["unit"]) == ("fake/subject", 20, "ns")
    assert len(subject["samples"]) == 20
    assert subject["anchor"] == "fake/floor" and subject["ratio_p50"] > 0

    table = harness.format_table(report)
    assert "fake/subject" in table and "fake/floor" in table and "p99.9" in table


def test_group_teardown_runs_when_measuring_fails() -> None:
    events: list[str] = []

    def broken() -> None:
        raise RuntimeError("boom")

    def failing_group(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
        try:
            yield [Benchmark("broken", broken)]
        finally:
            events.append("teardown")

    name = "unit_test_failing_group"
    harness.group(name)(failing_group)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            harness.run_group(name, harness.REGISTRY[name], RunConfig(samples=1, warmup=1))
    finally:
        del harness.REGISTRY[name]
    assert events == ["teardown"]
