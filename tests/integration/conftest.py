"""Integration fixtures: the five services as real processes on ephemeral loopback ports.

One stack (`stack`) is shared by the whole session; each test gets its own tenant, so the
tests do not see each other's functions. Tests that restart or damage a stack start their
own with `launch_stack`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from tensorwasm_client.client import GatewayClient
from tensorwasm_client.stack import LocalStack, ServiceProcess

_TENANTS = itertools.count(1)


@dataclass
class RunningStack:
    """A started LocalStack and the services it recorded."""

    launcher: LocalStack
    services: dict[str, ServiceProcess]

    @property
    def data_dir(self) -> Path:
        return self.launcher.data_dir

    @property
    def gateway(self) -> str:
        return self.services["gateway"].grpc_address

    def internal_channel(self, name: str, **options: object) -> grpc.Channel:
        """A blocking channel straight to an internal service, with the service token."""
        return self.launcher.internal_channel(name, **options)

    def client(self, tenant: str | None = None) -> GatewayClient:
        return GatewayClient(self.gateway, tenant=tenant)

    def stop(self) -> None:
        self.launcher.stop()


def start_stack(data_dir: Path, extra_env: dict[str, str] | None = None) -> RunningStack:
    """Starts the five services on ephemeral ports, with JSON-lines trace files."""
    launcher = LocalStack(
        data_dir,
        ephemeral_ports=True,
        extra_env={
            "OTEL_TRACES_EXPORTER": "jsonl",
            "TENSORWASM_EXECUTOR_INSTANCE_SWEEP_SECONDS": "0.1",
            "TENSORWASM_EXECUTOR_CALL_LOG": "true",
            # Each test acts as a tenant of its own: label every one in the metrics (past the
            # default 100 they would all be `_other`, and a test reading its own would fail
            # depending on how many ran before it).
            "TENSORWASM_GATEWAY_METRICS_MAX_TENANTS": "100000",
            **(extra_env or {}),
        },
    )
    return RunningStack(launcher, launcher.start())


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """The stack shared by the session."""
    running = start_stack(tmp_path_factory.mktemp("stack"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def launch_stack() -> Iterator[Callable[..., RunningStack]]:
    """Starts a private stack on a data dir (again after a stop); all stopped at teardown."""
    launched: list[RunningStack] = []

    def launch(data_dir: Path, extra_env: dict[str, str] | None = None) -> RunningStack:
        running = start_stack(data_dir, extra_env)
        launched.append(running)
        return running

    yield launch
    for running in reversed(launched):
        running.stop()


@pytest.fixture
def tenant(request: pytest.FixtureRequest) -> str:
    """A tenant id no other test uses."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")
    return f"t{next(_TENANTS)}-{slug}"[:63].rstrip("-")


@pytest.fixture
def client(stack: RunningStack, tenant: str) -> Iterator[GatewayClient]:
    """A gateway client of the shared stack, as this test's own tenant."""
    with stack.client(tenant) as gateway:
        yield gateway
