"""One /metrics for every gateway worker process (`TENSORWASM_GATEWAY_PROCESSES` > 1).

The supervisor serves the configured metrics address. Each worker serves its own registry
on a private loopback port; at every scrape the supervisor reads all of them at once and
answers with their series, each with a `worker` label (the worker's index), so one scrape
target sees the whole gateway and `sum without (worker) (...)` gives the gateway's totals.
Two series of its own go with them:

- `tensorwasm_gateway_worker_up{worker}`: 1 when that worker's metrics were read in this
  scrape, 0 when it is not serving (restarting) or did not answer in time;
- `tensorwasm_gateway_worker_restarts_total`: workers restarted since the gateway started.

A worker that does not answer within WORKER_SCRAPE_TIMEOUT_SECONDS is left out of that
scrape (up 0); the others are still served.
"""

from __future__ import annotations

import concurrent.futures
import http.server
import logging
import socket
import threading
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample
from tensorwasm_common.settings import split_address

_log = logging.getLogger(__name__)

WORKER_SCRAPE_TIMEOUT_SECONDS = 5.0
# Where a worker serves its own metrics: loopback, a port the kernel picks.
WORKER_METRICS_ADDRESS = "127.0.0.1:0"
WORKER_LABEL = "worker"

# (worker index, its metrics address) for each worker now serving.
WorkerList = Callable[[], Sequence[tuple[int, str]]]


def read_worker(address: str, timeout_seconds: float = WORKER_SCRAPE_TIMEOUT_SECONDS) -> str:
    """A worker's /metrics text (raises OSError when it does not answer)."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout_seconds) as reply:
        return str(reply.read().decode("utf-8"))


class _Scrape(Collector):
    """The families of one scrape: the workers' (labelled) and the supervisor's own."""

    def __init__(self, texts: Sequence[tuple[int, str | None]], restarts: int) -> None:
        self._texts = texts
        self._restarts = restarts

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for index, text in self._texts:
            if text is None:
                continue
            for family in text_string_to_metric_families(text):
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                into.samples.extend(_labelled(family.samples, str(index)))
        up = GaugeMetricFamily(
            "tensorwasm_gateway_worker_up",
            "1 when the worker's metrics were read in this scrape, else 0.",
            labels=[WORKER_LABEL],
        )
        for index, text in self._texts:
            up.add_metric([str(index)], 0.0 if text is None else 1.0)
        restarts = CounterMetricFamily(
            "tensorwasm_gateway_worker_restarts",
            "Gateway worker processes restarted after dying, since the gateway started.",
            value=self._restarts,
        )
        return [*merged.values(), up, restarts]


def _labelled(samples: Iterable[Sample], index: str) -> Iterator[Sample]:
    for sample in samples:
        yield sample._replace(labels={**sample.labels, WORKER_LABEL: index})


class WorkerMetrics:
    """The supervisor's /metrics endpoint over its workers' (see the module docstring)."""

    def __init__(
        self,
        address: str,
        workers: WorkerList,
        expected: Callable[[], Sequence[int]],
        restarts: Callable[[], int],
    ) -> None:
        """`workers`: the workers serving now; `expected`: every worker's index (a
        missing one is reported down); `restarts`: the restart count so far."""
        self._workers = workers
        self._expected = expected
        self._restarts = restarts
        host, port = split_address(address)
        self._server = _server_for(host, port, self._render)
        shown = f"[{host}]" if ":" in host else host
        self.address = f"{shown}:{self._server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="gateway-worker-metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def _render(self) -> bytes:
        serving = dict(self._workers())
        indexes = sorted({*self._expected(), *serving})
        texts: list[tuple[int, str | None]] = []
        with concurrent.futures.ThreadPoolExecutor(max(1, len(serving))) as pool:
            reads = {index: pool.submit(read_worker, serving[index]) for index in serving}
            for index in indexes:
                read = reads.get(index)
                texts.append((index, None if read is None else _text_of(index, read)))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Scrape(texts, self._restarts()))
        return generate_latest(registry)


def _text_of(index: int, read: concurrent.futures.Future[str]) -> str | None:
    try:
        return read.result()
    except OSError as exc:
        _log.warning(
            "gateway worker's metrics not read", extra={"worker": index, "error": str(exc)}
        )
        return None


def _server_for(
    host: str, port: int, render: Callable[[], bytes]
) -> http.server.ThreadingHTTPServer:
    """A threaded HTTP server on (host, port) answering every GET with `render()`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            try:
                body = render()
            except Exception:
                _log.exception("gateway metrics scrape failed")
                self.send_error(500)
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return  # scrapes are not logged, as a worker's own endpoint does not

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

    return Server((host, port), Handler)
