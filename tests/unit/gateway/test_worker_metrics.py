"""The gateway supervisor's /metrics over its workers' (worker_metrics.py), against real
prometheus_client endpoints standing in for the workers, over real HTTP."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from tensorwasm_gateway.worker_metrics import WorkerMetrics


class FakeWorker:
    """A worker's own endpoint: a registry of its own, served on loopback."""

    def __init__(self, calls: int, in_flight: int, latencies: list[float]) -> None:
        self.registry = CollectorRegistry()
        counter = Counter("tensorwasm_test_calls", "Calls.", ["method"], registry=self.registry)
        counter.labels("Invoke").inc(calls)
        Gauge("tensorwasm_test_in_flight", "In flight.", registry=self.registry).set(in_flight)
        histogram = Histogram(
            "tensorwasm_test_seconds", "Latency.", buckets=(0.1, 1.0), registry=self.registry
        )
        for latency in latencies:
            histogram.observe(latency)
        self.server, self.thread = start_http_server(0, addr="127.0.0.1", registry=self.registry)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def workers() -> Iterator[list[FakeWorker]]:
    started = [FakeWorker(3, 1, [0.05, 0.5]), FakeWorker(4, 2, [2.0])]
    yield started
    for worker in started:
        worker.stop()


def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=30) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def serve(workers: list[tuple[int, str]], expected: list[int], restarts: int = 0) -> WorkerMetrics:
    metrics = WorkerMetrics(
        "127.0.0.1:0",
        workers=lambda: workers,
        expected=lambda: expected,
        restarts=lambda: restarts,
    )
    metrics.start()
    return metrics


def test_every_workers_series_is_served_with_its_worker_label(workers: list[FakeWorker]) -> None:
    metrics = serve([(0, workers[0].address), (1, workers[1].address)], [0, 1], restarts=2)
    try:
        samples = scrape(metrics.address)
    finally:
        metrics.close()

    assert samples[("tensorwasm_test_calls_total", (("method", "Invoke"), ("worker", "0")))] == 3
    assert samples[("tensorwasm_test_calls_total", (("method", "Invoke"), ("worker", "1")))] == 4
    assert samples[("tensorwasm_test_in_flight", (("worker", "0"),))] == 1
    assert samples[("tensorwasm_test_in_flight", (("worker", "1"),))] == 2
    # Histograms stay whole per worker: their buckets, count and sum.
    assert samples[("tensorwasm_test_seconds_bucket", (("le", "0.1"), ("worker", "0")))] == 1
    assert samples[("tensorwasm_test_seconds_bucket", (("le", "+Inf"), ("worker", "0")))] == 2
    assert samples[("tensorwasm_test_seconds_bucket", (("le", "1.0"), ("worker", "1")))] == 0
    assert samples[("tensorwasm_test_seconds_count", (("worker", "1"),))] == 1
    assert samples[("tensorwasm_test_seconds_sum", (("worker", "1"),))] == 2.0
    assert samples[("tensorwasm_gateway_worker_up", (("worker", "0"),))] == 1
    assert samples[("tensorwasm_gateway_worker_up", (("worker", "1"),))] == 1
    assert samples[("tensorwasm_gateway_worker_restarts_total", ())] == 2


def test_a_worker_not_serving_or_not_answering_is_reported_down_and_the_rest_served(
    workers: list[FakeWorker],
) -> None:
    with socket.socket() as closed:  # a port nothing answers on once closed
        closed.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{closed.getsockname()[1]}"
    # Worker 1 does not answer; worker 2 is restarting (not serving, still expected).
    metrics = serve([(0, workers[0].address), (1, dead)], [0, 1, 2])
    try:
        samples = scrape(metrics.address)
    finally:
        metrics.close()

    assert samples[("tensorwasm_test_calls_total", (("method", "Invoke"), ("worker", "0")))] == 3
    assert not [key for key in samples if ("worker", "1") in key[1] and "up" not in key[0]]
    assert samples[("tensorwasm_gateway_worker_up", (("worker", "0"),))] == 1
    assert samples[("tensorwasm_gateway_worker_up", (("worker", "1"),))] == 0
    assert samples[("tensorwasm_gateway_worker_up", (("worker", "2"),))] == 0


def test_a_held_metrics_port_is_refused() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        with pytest.raises(OSError):
            WorkerMetrics(
                f"127.0.0.1:{held.getsockname()[1]}",
                workers=list,
                expected=list,
                restarts=lambda: 0,
            )
