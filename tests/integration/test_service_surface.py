"""What every service process exposes: health, reflection, metrics; one process each."""

from __future__ import annotations

import json
import os
import re
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tensorwasm_client.client import GatewayClient, TensorWasmError

pytestmark = pytest.mark.integration

SERVICE_NAMES = {
    "gateway": "tensorwasm.gateway.v1.GatewayService",
    "executor": "tensorwasm.executor.v1.ExecutorService",
    "dispatcher": "tensorwasm.dispatcher.v1.DispatcherService",
    "snapshot": "tensorwasm.snapshot.v1.SnapshotStoreService",
    "jit": "tensorwasm.jit.v1.JitCacheService",
}


@pytest.mark.parametrize("service", sorted(SERVICE_NAMES))
def test_health_is_serving(stack: Any, service: str) -> None:
    with grpc.insecure_channel(stack.services[service].grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE_NAMES[service]):
            reply = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("service", sorted(SERVICE_NAMES))
def test_reflection_lists_the_service(stack: Any, service: str) -> None:
    with grpc.insecure_channel(stack.services[service].grpc_address) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = iter(
            [
                reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(
                    file_containing_symbol=SERVICE_NAMES[service]
                ),
            ]
        )
        listed, described = reflection.ServerReflectionInfo(requests, timeout=10)

    names = {s.name for s in listed.list_services_response.service}
    assert SERVICE_NAMES[service] in names
    assert "grpc.health.v1.Health" in names
    # The other services are not served by this process.
    assert names.isdisjoint(set(SERVICE_NAMES.values()) - {SERVICE_NAMES[service]})
    assert described.file_descriptor_response.file_descriptor_proto


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        assert response.status == 200
        body: str = response.read().decode()
    return body


def requests_total(metrics: str, method: str, code: str) -> float:
    for line in metrics.splitlines():
        if line.startswith("tensorwasm_grpc_server_requests_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if labels == {"service": "gateway", "method": method, "code": code}:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_gateway_metrics_count_requests_by_method_and_code(
    stack: Any, client: GatewayClient
) -> None:
    address = stack.services["gateway"].metrics_address
    listed = "/tensorwasm.gateway.v1.GatewayService/ListFunctions"
    got = "/tensorwasm.gateway.v1.GatewayService/GetFunction"
    before = scrape(address)

    client.list_page(10)
    with pytest.raises(TensorWasmError):
        client.get_function("missing")
    after = scrape(address)

    assert "# TYPE tensorwasm_grpc_server_requests_total counter" in after
    assert requests_total(after, listed, "OK") == requests_total(before, listed, "OK") + 1
    assert requests_total(after, got, "NOT_FOUND") == requests_total(before, got, "NOT_FOUND") + 1
    assert "tensorwasm_grpc_server_request_duration_seconds_bucket" in after


@pytest.mark.parametrize("service", sorted(SERVICE_NAMES))
def test_every_service_serves_metrics(stack: Any, service: str) -> None:
    assert "# TYPE tensorwasm_grpc_server_requests_total counter" in scrape(
        stack.services[service].metrics_address
    )


def test_each_service_is_its_own_process(stack: Any) -> None:
    services = stack.services
    assert set(services) == set(SERVICE_NAMES)
    pids = {name: service.pid for name, service in services.items()}
    assert len(set(pids.values())) == 5
    assert os.getpid() not in pids.values()
    assert len({s.grpc_address for s in services.values()}) == 5
    for name, pid in pids.items():
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert f"tensorwasm_{name}".encode() in cmdline, cmdline
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state != "Z", f"{name} is a zombie"
        # The process that reported ready (and bound the port) is the one launched.
        ready = json.loads((stack.data_dir / "run" / f"{name}.ready.json").read_text())
        assert ready["pid"] == pid
        assert ready["grpc_address"] == services[name].grpc_address
    assert stack.launcher.running()
