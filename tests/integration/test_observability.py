"""The observability pack against the real services: a real Prometheus (Debian's) scrapes
all five, loads the alert rules, and answers every PromQL expression of the Grafana
dashboard on what it scraped; OTLP spans from all five services reach an OTLP/gRPC
receiver (opentelemetry-proto's TraceService, in this test) under one trace id; the alert
rules pass their `promtool test rules` unit tests."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import wasmtime
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm.gateway.v1 import gateway_service_pb2 as gateway_pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as gateway_grpc
from tensorwasm_client.stack import LocalStack

from tests.integration.conftest import RunningStack

pytestmark = [pytest.mark.integration, pytest.mark.engines]

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "deploy" / "observability"
DASHBOARD = PACK / "grafana" / "tensorwasm-dashboard.json"
ALERTS = PACK / "prometheus" / "alerts.yaml"
GUEST = ROOT / "clients" / "guest" / "examples" / "jit_matmul.wat"
SERVICES = ("gateway", "executor", "dispatcher", "snapshot", "jit")
TENANT = "observed"
# Grafana's variables, as the dashboard's queries would see them.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "10m", "$job": "tensorwasm-.*"}


@dataclass
class ReceivedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps every span it is sent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    kind = span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_")
                    received.append(ReceivedSpan(
                        attributes.get("service.name", ""), span.trace_id.hex(),
                        span.span_id.hex(), span.parent_span_id.hex(), span.name, kind,
                    ))  # fmt: skip
        with self._lock:
            self._spans.extend(received)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)


@dataclass
class Observed:
    stack: RunningStack
    receiver: Receiver
    trace_id: str


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    """A stack exporting OTLP to the receiver, after one traced deploy and invoke of a guest
    that reaches all five services (store: the module; jit: its kernel; dispatcher: the
    launch)."""
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    launcher = LocalStack(
        tmp_path_factory.mktemp("observed"),
        ephemeral_ports=True,
        extra_env={
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        },
    )
    stack = RunningStack(launcher, launcher.start())
    try:
        trace_id = secrets.token_hex(16)
        _traced_deploy_and_invoke(stack.gateway, trace_id)
        yield Observed(stack, receiver, trace_id)
    finally:
        stack.stop()
        server.stop(grace=None)


def _traced_deploy_and_invoke(gateway: str, trace_id: str) -> None:
    """Deploys the jit guest and runs a matmul, both as children of the caller's trace."""
    metadata = (
        ("x-tensorwasm-tenant", TENANT),
        ("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"),
    )
    m = n = k = 4
    with grpc.insecure_channel(gateway) as channel:
        stub = gateway_grpc.GatewayServiceStub(channel)
        stub.CreateFunction(
            gateway_pb.CreateFunctionRequest(
                function_id="matmul", wasm=bytes(wasmtime.wat2wasm(GUEST.read_text()))
            ),
            metadata=metadata,
            timeout=120,
        )
        response = stub.Invoke(
            gateway_pb.InvokeRequest(
                name="functions/matmul",
                export_name="run",
                # m, n, k; offload the matmul to the GPU; print nothing
                args=[Value(i32=v) for v in (m, n, k, 1, 0)],
            ),
            metadata=metadata,
            timeout=120,
        )
        assert response.outcome.WhichOneof("result") == "success", response
        assert list(response.outcome.success.results) == [Value(i32=0)]
        # a kernel asked for by op name: the executor has the jit cache emit it
        relu = stub.Invoke(
            gateway_pb.InvokeRequest(
                name="functions/matmul", export_name="relu", args=[Value(i32=1000)]
            ),
            metadata=metadata,
            timeout=120,
        )
    assert relu.outcome.WhichOneof("result") == "success", relu


def test_otlp_spans_from_all_five_services_share_one_trace(observed: Observed) -> None:
    # Export is batched per process (and machines are loaded): a service's spans may come
    # in several batches, so the trace is checked again until it is whole or time is up.
    deadline = time.monotonic() + 60
    while True:
        in_trace = [s for s in observed.receiver.spans() if s.trace_id == observed.trace_id]
        try:
            _check_one_trace(in_trace)
            return
        except (AssertionError, KeyError, ValueError):
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.2)


def _check_one_trace(in_trace: list[ReceivedSpan]) -> None:
    wanted = {f"tensorwasm-{service}" for service in SERVICES}
    assert {s.service for s in in_trace if s.kind == "SERVER"} >= wanted, sorted(
        {(s.service, s.kind) for s in in_trace}
    )
    by_id = {s.span_id: s for s in in_trace}

    def served_by(service: str, prefix: str) -> list[ReceivedSpan]:
        return [
            s for s in in_trace
            if s.service == f"tensorwasm-{service}" and s.kind == "SERVER"
            and s.name.startswith(prefix)
        ]  # fmt: skip

    def caller(span: ReceivedSpan) -> ReceivedSpan:
        parent = by_id[span.parent_span_id]
        assert parent.kind == "CLIENT" and parent.name == span.name
        return parent

    # gateway -> executor -> dispatcher and jit cache, within each of the two Invokes
    invokes = served_by("gateway", "/tensorwasm.gateway.v1.GatewayService/Invoke")
    executed = served_by("executor", "/tensorwasm.executor.v1.ExecutorService/Invoke")
    assert len(invokes) == len(executed) == 2
    assert {id(by_id[caller(s).parent_span_id]) for s in executed} == set(map(id, invokes))
    dispatched = served_by("dispatcher", "/tensorwasm.dispatcher.v1.")
    emitted = served_by("jit", "/tensorwasm.jit.v1.")
    assert dispatched and emitted
    for span in [*dispatched, *emitted]:
        assert by_id[caller(span).parent_span_id] in executed
    # gateway -> store within the deploy
    (deploy,) = served_by("gateway", "/tensorwasm.gateway.v1.GatewayService/CreateFunction")
    stored = served_by("snapshot", "/tensorwasm.snapshot.v1.SnapshotStoreService/PutBlob")
    assert any(by_id[caller(s).parent_span_id] is deploy for s in stored)


@pytest.fixture(scope="module")
def prometheus(observed: Observed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping the five services every second, with the alert rules."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run `make observability-tools`")
    directory = tmp_path_factory.mktemp("prometheus")
    jobs = [
        {
            "job_name": f"tensorwasm-{service}",
            "scrape_interval": "1s",
            "static_configs": [{"targets": [observed.stack.services[service].metrics_address]}],
        }
        for service in SERVICES
    ]
    config = {"rule_files": [str(ALERTS)], "scrape_configs": jobs}
    (directory / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    address = f"127.0.0.1:{_free_port()}"
    with (directory / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [binary, f"--config.file={directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address={address}"],
            stdout=log, stderr=log,
        )  # fmt: skip
    url = f"http://{address}"
    try:
        deadline = time.monotonic() + 60
        while not _ready(url):
            assert process.poll() is None, (directory / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "prometheus never became ready"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=5) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def _api(url: str, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}/api/v1/{path}{query}", timeout=30) as reply:
        answer = json.loads(reply.read())
    assert answer["status"] == "success", answer
    return answer["data"]


def test_prometheus_scrapes_all_five_services_and_loads_the_alerts(prometheus: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        targets = _api(prometheus, "targets")["activeTargets"]
        up = {t["labels"]["job"] for t in targets if t["health"] == "up"}
        if up == {f"tensorwasm-{service}" for service in SERVICES}:
            break
        assert time.monotonic() < deadline, targets
        time.sleep(0.2)
    rules = _api(prometheus, "rules")["groups"]
    loaded = {rule["name"] for group in rules for rule in group["rules"]}
    assert "TensorWasmServiceDown" in loaded and len(loaded) == 8
    # every service's own series arrived, not just `up`
    for service in SERVICES:
        selector = f'tensorwasm_grpc_server_requests_total{{job="tensorwasm-{service}"}}'
        assert _api(prometheus, "query", query=selector)["result"], service


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_dashboard_expression_runs_on_what_prometheus_scraped(prometheus: str) -> None:
    # the scraped metric families (from their HELP/TYPE, even those with no sample yet;
    # OpenMetrics names a counter's family without its _total)
    deadline = time.monotonic() + 60
    while True:
        families = set(_api(prometheus, "metadata"))
        if {"tensorwasm_dispatcher_kernel_seconds", "tensorwasm_jit_cache_lookups",
            "tensorwasm_snapshot_gc_runs"} <= families:  # fmt: skip
            break
        assert time.monotonic() < deadline, sorted(f for f in families if "tensorwasm" in f)
        time.sleep(0.5)
    expressions = _dashboard_expressions()
    assert len(expressions) >= 20
    for template in expressions:
        expression = template
        for variable, value in GRAFANA_VARIABLES.items():
            expression = expression.replace(variable, value)
        assert "$" not in expression, expression
        _api(prometheus, "query", query=expression)  # a parse or type error fails here
        for name in re.findall(r"\b(tensorwasm_[a-z_]+)", expression):
            family = re.sub(r"_(total|bucket|count|sum)$", "", name)
            assert name in families or family in families, (name, expression)
    # the request histogram has data: the traced calls above were measured
    p99 = _api(prometheus, "query", query=(
        "histogram_quantile(0.99, sum by (le) "
        '(tensorwasm_grpc_server_request_duration_seconds_bucket{service="gateway"}))'
    ))["result"]  # fmt: skip
    assert p99 and float(p99[0]["value"][1]) > 0


def test_the_alert_rules_pass_their_unit_tests() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run `make observability-tools`")
    checked = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yaml"],
        cwd=ALERTS.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout
