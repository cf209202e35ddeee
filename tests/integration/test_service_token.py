"""The fleet credential on the running stack: the internal services refuse calls without
the service token (or with another), answer health checks without it, and the stack,
whose services send it to each other, works end to end; an internal service beyond
loopback without a token refuses to start."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorwasm.common.v1 import values_pb2
from tensorwasm.common.v1.service_token import SERVICE_TOKEN_METADATA_KEY
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2 as dispatcher_pb
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2_grpc as dispatcher_grpc
from tensorwasm.executor.v1 import executor_service_pb2 as executor_pb
from tensorwasm.executor.v1 import executor_service_pb2_grpc as executor_grpc
from tensorwasm.jit.v1 import jit_service_pb2 as jit_pb
from tensorwasm.jit.v1 import jit_service_pb2_grpc as jit_grpc
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as snapshot_pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as snapshot_grpc
from tensorwasm_common.status import error_from_rpc

from tests.integration.conftest import RunningStack

pytestmark = pytest.mark.integration

TENANT = ("x-tensorwasm-tenant", "svc-token")


def _calls() -> dict[str, Callable[[grpc.Channel, tuple[tuple[str, str], ...]], Any]]:
    """One call per internal service, of each RPC shape (unary, server and client stream)."""

    def executor_invoke(channel: grpc.Channel, md: tuple[tuple[str, str], ...]) -> Any:
        return executor_grpc.ExecutorServiceStub(channel).Invoke(
            executor_pb.InvokeRequest(), metadata=md, timeout=10
        )

    def executor_stream(channel: grpc.Channel, md: tuple[tuple[str, str], ...]) -> Any:
        return list(
            executor_grpc.ExecutorServiceStub(channel).InvokeStream(
                executor_pb.InvokeStreamRequest(), metadata=md, timeout=10
            )
        )

    def dispatcher(channel: grpc.Channel, md: tuple[tuple[str, str], ...]) -> Any:
        return dispatcher_grpc.DispatcherServiceStub(channel).GetDevice(
            dispatcher_pb.GetDeviceRequest(), metadata=md, timeout=10
        )

    def store_gc(channel: grpc.Channel, md: tuple[tuple[str, str], ...]) -> Any:
        return snapshot_grpc.SnapshotStoreServiceStub(channel).CollectGarbage(
            snapshot_pb.CollectGarbageRequest(), metadata=md, timeout=10
        )

    def store_put(channel: grpc.Channel, md: tuple[tuple[str, str], ...]) -> Any:
        return snapshot_grpc.SnapshotStoreServiceStub(channel).PutBlob(
            iter([snapshot_pb.PutBlobRequest()]), metadata=md, timeout=10
        )

    def jit_put(channel: grpc.Channel, md: tuple[tuple[str, str], ...]) -> Any:
        return jit_grpc.JitCacheServiceStub(channel).PutArtifact(
            jit_pb.PutArtifactRequest(
                ptx_digest="0" * 64, compute_capability="sm_80", data=b"poisoned"
            ),
            metadata=md,
            timeout=10,
        )

    return {
        "executor:Invoke": executor_invoke,
        "executor:InvokeStream": executor_stream,
        "dispatcher:GetDevice": dispatcher,
        "snapshot:CollectGarbage": store_gc,
        "snapshot:PutBlob": store_put,
        "jit:PutArtifact": jit_put,
    }


CALLS = _calls()


@pytest.mark.parametrize("call", sorted(CALLS))
@pytest.mark.parametrize(
    ("token", "reason"),
    [(None, "SERVICE_TOKEN_REQUIRED"), ("x" * 43, "SERVICE_TOKEN_INVALID")],
    ids=["missing", "wrong"],
)
def test_an_internal_call_without_the_fleet_token_is_unauthenticated(
    stack: RunningStack, call: str, token: str | None, reason: str
) -> None:
    service = call.split(":", maxsplit=1)[0]
    metadata = (TENANT,) if token is None else (TENANT, (SERVICE_TOKEN_METADATA_KEY, token))
    with (
        grpc.insecure_channel(stack.services[service].grpc_address) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        CALLS[call](channel, metadata)
    error = error_from_rpc(caught.value)
    assert (error.code.name, error.reason) == ("UNAUTHENTICATED", reason), error


@pytest.mark.parametrize("call", sorted(CALLS))
def test_the_fleet_token_passes_the_check(stack: RunningStack, call: str) -> None:
    service = call.split(":", maxsplit=1)[0]
    token = stack.launcher.service_token()
    assert len(token) >= 32
    metadata = (TENANT, (SERVICE_TOKEN_METADATA_KEY, token))
    with grpc.insecure_channel(stack.services[service].grpc_address) as channel:
        try:
            CALLS[call](channel, metadata)
        except grpc.RpcError as exc:  # the empty requests may be refused, but not for auth
            assert error_from_rpc(exc).code.name != "UNAUTHENTICATED", exc


def test_a_repeated_token_header_is_refused(stack: RunningStack) -> None:
    token = stack.launcher.service_token()
    metadata = (TENANT, (SERVICE_TOKEN_METADATA_KEY, token), (SERVICE_TOKEN_METADATA_KEY, token))
    with (
        grpc.insecure_channel(stack.services["dispatcher"].grpc_address) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        CALLS["dispatcher:GetDevice"](channel, metadata)
    assert error_from_rpc(caught.value).reason == "SERVICE_TOKEN_INVALID"


@pytest.mark.parametrize("service", ["executor", "dispatcher", "snapshot", "jit"])
def test_health_answers_without_the_token(stack: RunningStack, service: str) -> None:
    with grpc.insecure_channel(stack.services[service].grpc_address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_the_stack_works_with_the_check_on(
    stack: RunningStack, tenant: str, wasm: Callable[[str], bytes]
) -> None:
    token_file = stack.launcher.service_token_path
    assert token_file.stat().st_mode & 0o777 == 0o600
    # gateway -> store (the module) and gateway -> executor -> store, all with the token
    with stack.client(tenant) as client:
        client.create_function("add", wasm("add"))
        result = client.invoke("add", "add", [values_pb2.Value(i32=2), values_pb2.Value(i32=3)])
    assert list(result.outcome.success.results) == [values_pb2.Value(i32=5)]


def _start(service: str, tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    prefix = f"TENSORWASM_{service.upper()}_"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.endswith("SERVICE_TOKEN_FILE")  # no token from anywhere
    }
    env.update(
        {
            "OTEL_TRACES_EXPORTER": "none",
            prefix + "LISTEN_ADDRESS": "0.0.0.0:0",
            prefix + "METRICS_ADDRESS": "",
            prefix + "READY_FILE": str(tmp_path / "ready.json"),
            **{prefix + key.upper(): value for key, value in settings.items()},
        }
    )
    return subprocess.run(
        [sys.executable, "-m", f"tensorwasm_{service}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("service", ["jit", "snapshot"])
def test_an_internal_service_beyond_loopback_without_a_token_refuses_to_start(
    service: str, tmp_path: Path
) -> None:
    extra = {"data_dir": str(tmp_path / "data")} if service == "snapshot" else {}
    finished = _start(service, tmp_path, **extra)
    assert finished.returncode == 2, finished.stderr
    assert "no service token" in finished.stderr
    assert not (tmp_path / "ready.json").exists()


def test_a_malformed_token_file_refuses_to_start(tmp_path: Path) -> None:
    short = tmp_path / "token"
    short.write_text("too-short\n")
    finished = _start("jit", tmp_path, service_token_file=str(short))
    assert finished.returncode == 2, finished.stderr
    assert "service_token_file" in finished.stderr
