"""`grpc.health.v1.Health/Watch` streams the serving status on every service."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.integration

SERVICES = ("dispatcher", "executor", "gateway", "jit", "snapshot")


@pytest.mark.parametrize("service", SERVICES)
def test_watch_answers_serving_first(stack: Any, service: str) -> None:
    # Meshes and load balancers watch health: an error here reads as "down".
    with grpc.insecure_channel(stack.services[service].grpc_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
        try:
            first = next(watch)
        finally:
            watch.cancel()

    assert first.status == health_pb2.HealthCheckResponse.SERVING
