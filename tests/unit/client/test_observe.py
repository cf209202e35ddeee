"""The metrics the CLI reads (tensorwasm_client.observe), and `tensorwasm metrics` and
`tensorwasm observe --once` against endpoints served by prometheus_client itself in this
process (the services' own series are exercised on the real stack in
tests/e2e/test_cli_observe.py)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import start_http_server
from rich.console import Console
from tensorwasm_client.cli import app
from tensorwasm_client.observe import Board, build_board, metrics_url
from tensorwasm_client.observe.board import SourceState, source_kind
from tensorwasm_client.observe.render import render
from tensorwasm_client.observe.scrape import Scrape, ScrapeError, histogram_quantile, parse
from typer.testing import CliRunner, Result

INVOKE = "/tensorwasm.gateway.v1.GatewayService/Invoke"
LIST = "/tensorwasm.gateway.v1.GatewayService/ListFunctions"


def gateway_registry() -> CollectorRegistry:
    """A gateway's series, as the gateway names and labels them, with known values."""
    registry = CollectorRegistry()
    invocations = Counter(
        "tensorwasm_gateway_invocations", "calls", ["tenant", "method", "code"], registry=registry
    )
    invocations.labels("alpha", "invoke", "OK").inc(6)
    invocations.labels("alpha", "invoke", "NOT_FOUND").inc(1)
    invocations.labels("beta", "call_instance", "OK").inc(2)
    rejections = Counter(
        "tensorwasm_gateway_rejections", "refused", ["tenant", "reason"], registry=registry
    )
    rejections.labels("beta", "RATE_LIMITED").inc(3)
    errors = Counter(
        "tensorwasm_grpc_server_errors", "errors", ["service", "method", "reason"],
        registry=registry,
    )  # fmt: skip
    errors.labels("gateway", INVOKE, "FUNCTION_NOT_FOUND").inc(1)
    errors.labels("gateway", INVOKE, "RATE_LIMITED").inc(3)
    duration = Histogram(
        "tensorwasm_grpc_server_request_duration_seconds", "time", ["service", "method"],
        buckets=(0.001, 0.01, 0.1, 1), registry=registry,
    )  # fmt: skip
    for seconds in (0.0005,) * 5 + (0.005,) * 4 + (0.5,):
        duration.labels("gateway", INVOKE).observe(seconds)
    for _ in range(100):  # not an invoking method: not in the board's latency
        duration.labels("gateway", LIST).observe(5.0)
    return registry


def dispatcher_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    seconds = Counter("tensorwasm_dispatcher_kernel_seconds", "gpu", ["tenant"], registry=registry)
    seconds.labels("beta").inc(0.25)
    launches = Counter("tensorwasm_dispatcher_launches", "launches", ["tenant"], registry=registry)
    launches.labels("beta").inc(4)
    queued = Gauge("tensorwasm_dispatcher_queued_batches", "q", ["tenant"], registry=registry)
    queued.labels("beta").set(2)
    Gauge("tensorwasm_dispatcher_workers", "w", registry=registry).set(1)
    return registry


def executor_registry(in_flight: int) -> CollectorRegistry:
    registry = CollectorRegistry()
    Gauge("tensorwasm_executor_calls_in_flight", "f", registry=registry).set(in_flight)
    Gauge("tensorwasm_executor_calls_in_flight_limit", "l", registry=registry).set(16)
    refusals = Counter("tensorwasm_executor_admission_refusals", "r", ["cause"], registry=registry)
    refusals.labels("tenant_cap").inc(2)
    return registry


def scraped(registry: CollectorRegistry) -> Scrape:
    return Scrape(parse(generate_latest(registry).decode()))


@pytest.fixture
def served() -> Iterator[dict[str, str]]:
    """Metrics endpoints on loopback: a gateway, two executor replicas, a dispatcher."""
    registries = {
        "gateway": gateway_registry(),
        "executor": executor_registry(3),
        "executor-2": executor_registry(1),
        "dispatcher": dispatcher_registry(),
    }
    servers = {}
    for name, registry in registries.items():
        servers[name] = start_http_server(0, addr="127.0.0.1", registry=registry)
    yield {name: f"127.0.0.1:{server.server_address[1]}" for name, (server, _) in servers.items()}
    for server, thread in servers.values():
        server.shutdown()
        server.server_close()
        thread.join()


def tensorwasm(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), prog_name="tensorwasm")


def test_metrics_url_takes_an_address_or_a_url() -> None:
    assert metrics_url("127.0.0.1:9100") == "http://127.0.0.1:9100/metrics"
    assert metrics_url("http://host:9100") == "http://host:9100/metrics"
    assert metrics_url("https://host/custom/path") == "https://host/custom/path"


def test_histogram_quantile_interpolates_within_the_bucket() -> None:
    buckets = [(0.1, 2.0), (0.2, 6.0), (math.inf, 8.0)]
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1)  # rank 2: the first's top
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.15)  # rank 4: half into (.1, .2]
    assert histogram_quantile(0.99, buckets) == 0.2  # in +Inf: the highest finite bound
    assert histogram_quantile(0.5, [(0.1, 0.0), (math.inf, 0.0)]) is None
    assert histogram_quantile(0.5, []) is None


def test_scrape_sums_filters_and_groups() -> None:
    gateway = scraped(gateway_registry())
    assert gateway.total("tensorwasm_gateway_invocations_total") == 9
    assert gateway.by("tensorwasm_gateway_invocations_total", "tenant") == {
        "alpha": 7, "beta": 2,
    }  # fmt: skip
    failed = gateway.by(
        "tensorwasm_gateway_invocations_total", "code", {"code": lambda code: code != "OK"}
    )
    assert failed == {"NOT_FOUND": 1}
    assert not gateway.has("no_such_metric")
    assert gateway.total("no_such_metric") == 0


def test_the_board_sums_the_services_series() -> None:
    executors = scraped(executor_registry(3)) + scraped(executor_registry(1))
    sources = (SourceState("gateway", "g:1"), SourceState("executor", "e:1", "down"))
    board = build_board(
        {"gateway": scraped(gateway_registry()), "executor": executors,
         "dispatcher": scraped(dispatcher_registry())},
        sources,
    )  # fmt: skip
    assert board.calls_total == 9
    assert board.calls_per_second is None  # the first frame has no window
    assert board.errors_by_reason == {"RATE_LIMITED": 3, "FUNCTION_NOT_FOUND": 1}
    assert board.errors_total == 4
    # 10 Invoke observations: rank 5 is the top of the first bucket, rank 9.9 is 0.9 of
    # the way into (0.1, 1].
    assert board.latency_p50_seconds == pytest.approx(0.001)
    assert board.latency_p99_seconds == pytest.approx(0.1 + 0.9 * 0.9)
    tenants = {row.tenant: row for row in board.tenants}
    assert (tenants["alpha"].calls, tenants["alpha"].errors) == (7, 1)
    assert (tenants["beta"].calls, tenants["beta"].errors) == (2, 3)
    assert (tenants["beta"].gpu_seconds, tenants["beta"].kernel_launches) == (0.25, 4)
    assert [row.tenant for row in board.tenants] == ["alpha", "beta"]
    assert (board.executor_in_flight, board.executor_in_flight_limit) == (4, 32)
    assert board.executor_refusals == {"tenant_cap": 4}
    assert (board.dispatcher_queued_batches, board.dispatcher_workers) == (2, 1)
    assert board.store_objects is None  # no store scraped: unknown, not zero
    assert board.sources == sources

    later = build_board({"gateway": scraped(gateway_registry()) + scraped(gateway_registry())},
                        sources, board, 2.0)  # fmt: skip
    assert later.calls_per_second == pytest.approx(4.5)  # 9 more calls in 2 s
    restarted = build_board({}, sources, board, 2.0)
    assert restarted.calls_per_second is None  # the counters began again


def slow_invokes(count: int, seconds: float) -> CollectorRegistry:
    registry = CollectorRegistry()
    duration = Histogram(
        "tensorwasm_grpc_server_request_duration_seconds", "time", ["service", "method"],
        buckets=(0.001, 0.01, 0.1, 1), registry=registry,
    )  # fmt: skip
    for _ in range(count):
        duration.labels("gateway", INVOKE).observe(seconds)
    return registry


def test_latency_is_that_of_the_last_interval_when_it_had_calls() -> None:
    sources = (SourceState("gateway", "g:1"),)
    first = build_board({"gateway": scraped(gateway_registry())}, sources)
    assert not first.latency_window  # no previous frame: since start
    assert first.latency_p50_seconds == pytest.approx(0.001)
    assert "latency_buckets" not in first.to_json()
    json.dumps(first.to_json(), allow_nan=False)  # strict JSON: no +Inf bound in it

    # Ten more calls, all slow: the window's P50 is theirs, not diluted by the fast ones.
    grown = scraped(gateway_registry()) + scraped(slow_invokes(10, 0.5))
    second = build_board({"gateway": grown}, sources, first, 2.0)
    assert second.latency_window
    assert second.latency_p50_seconds == pytest.approx(0.1 + 0.9 * 0.5)

    # No call since: back to the latency since start.
    third = build_board({"gateway": grown}, sources, second, 2.0)
    assert not third.latency_window
    assert third.latency_p50_seconds == pytest.approx(
        histogram_quantile(0.5, list(second.latency_buckets))
    )


def test_the_rendered_board_shows_the_numbers() -> None:
    board = Board(
        sources=(SourceState("gateway", "127.0.0.1:1"),
                 SourceState("snapshot", "127.0.0.1:2", "connection refused")),
        calls_total=1234, calls_per_second=12.5, errors_total=5,
        errors_by_reason={"RATE_LIMITED": 5}, latency_p50_seconds=0.0042,
        latency_p99_seconds=1.5, store_objects=7, store_bytes=3 * 1024 * 1024,
    )  # fmt: skip
    console = Console(width=120, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(render(board, title="board"))
    text = console.export_text()
    console.file.close()
    for shown in ("1234", "12.5", "RATE_LIMITED", "4.2 ms", "1.50 s", "3.0 MiB",
                  "connection refused"):  # fmt: skip
        assert shown in text


def test_source_kind_groups_replicas() -> None:
    assert source_kind("executor-2") == "executor"
    assert source_kind("executor") == "executor"
    assert source_kind("gateway") == "gateway"


def test_metrics_prints_families_readably(served: dict[str, str]) -> None:
    result = tensorwasm("metrics", "--url", served["gateway"], "tensorwasm_gateway")
    assert result.exit_code == 0, result.output
    blocks = result.stdout.split("\n\n")
    assert blocks[0].splitlines() == [
        "tensorwasm_gateway_invocations (counter): calls",
        "  code=OK method=invoke tenant=alpha         6",
        "  code=NOT_FOUND method=invoke tenant=alpha  1",
        "  code=OK method=call_instance tenant=beta   2",
    ]
    assert "_created" not in result.stdout
    histogram = tensorwasm("metrics", "--url", served["gateway"], "duration")
    lines = histogram.stdout.splitlines()
    assert lines[0].startswith("tensorwasm_grpc_server_request_duration_seconds (histogram)")
    invoke = next(line for line in lines if INVOKE in line)
    assert "count 10" in invoke and "p50 0.001 " in invoke

    raw = tensorwasm("metrics", "--url", served["gateway"], "--raw")
    assert "# TYPE tensorwasm_gateway_invocations_total counter" in raw.stdout

    as_json = tensorwasm("-o", "json", "metrics", "--url", served["gateway"], "rejections")
    assert json.loads(as_json.stdout) == [{
        "family": "tensorwasm_gateway_rejections", "type": "counter",
        "name": "tensorwasm_gateway_rejections_total",
        "labels": {"tenant": "beta", "reason": "RATE_LIMITED"}, "value": 3.0,
    }]  # fmt: skip


def test_metrics_of_an_unreachable_endpoint_exits_1() -> None:
    result = tensorwasm("metrics", "--url", "127.0.0.1:1")
    assert result.exit_code == 1
    assert result.output.startswith("error: cannot read metrics from http://127.0.0.1:1/metrics")


def test_metrics_without_a_stack_or_url_says_what_to_do(tmp_path: Path) -> None:
    result = tensorwasm("--data-dir", str(tmp_path), "metrics")
    assert result.exit_code == 1
    assert "no stack recorded" in result.output and "--metrics" in result.output


def test_observe_once_reads_every_source(served: dict[str, str]) -> None:
    sources = [
        arg for name, address in served.items() for arg in ("--metrics", f"{name}={address}")
    ]
    result = tensorwasm("-o", "json", "observe", "--once", *sources)
    assert result.exit_code == 0, result.output
    board = json.loads(result.stdout)
    assert board["calls_total"] == 9
    assert board["executor_in_flight"] == 4  # both replicas
    assert {row["tenant"]: row["kernel_launches"] for row in board["tenants"]} == {
        "alpha": 0, "beta": 4,
    }  # fmt: skip

    text = tensorwasm("observe", "--once", *sources)
    assert text.exit_code == 0, text.output
    assert "FUNCTION_NOT_FOUND" in text.stdout and "4/32" in text.stdout


def test_observe_once_marks_a_dead_source_and_exits_1(served: dict[str, str]) -> None:
    result = tensorwasm(
        "observe", "--once", "--metrics", f"gateway={served['gateway']}",
        "--metrics", "snapshot=127.0.0.1:1",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "error: snapshot: cannot read metrics" in result.output
    assert "9" in result.stdout  # the gateway's part is still shown


@pytest.mark.parametrize("entry", ["gateway", "=127.0.0.1:1", "gateway="])
def test_observe_refuses_a_malformed_source(entry: str) -> None:
    result = tensorwasm("observe", "--once", "--metrics", entry)
    assert result.exit_code == 1
    assert "--metrics takes NAME=ADDRESS" in result.output


def test_scrape_errors_are_os_errors() -> None:
    # The CLI's refusals include OSError: an unreadable endpoint is `error: ...`, exit 1.
    assert issubclass(ScrapeError, OSError)
