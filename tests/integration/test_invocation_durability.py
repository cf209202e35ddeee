"""Async invocations across real gateway restarts: a finished result survives a restart,
and an invocation running when the gateway is killed -9 ends FAILED
INVOCATION_INTERRUPTED after the restart, without being sent to an executor again (the
executor's call log names each request id once per call it received)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
import wasmtime
from grpc_status import rpc_status
from tensorwasm.common.v1 import values_pb2
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_client.client import invocation_limits

from tests.integration.conftest import RunningStack

pytestmark = pytest.mark.integration
TENANT = "durable"
MODULE = bytes(
    wasmtime.wat2wasm(
        '(module (func (export "add") (param i32 i32) (result i32)'
        " local.get 0 local.get 1 i32.add)"
        ' (func (export "spin") (loop br 0)))'
    )
)


def received(stack: RunningStack, request_id: str) -> list[dict[str, object]]:
    """The executor's call-log lines for `request_id`."""
    lines = []
    for raw in Path(stack.services["executor"].log_path).read_text().splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if entry.get("message") == "call received" and entry.get("request_id") == request_id:
            lines.append(entry)
    return lines


def start(stack: RunningStack, export: str, args: list[values_pb2.Value], request_id: str,
          timeout_seconds: float) -> pb.Invocation:  # fmt: skip
    """StartInvocation with our own x-request-id, which the gateway forwards."""
    request = pb.StartInvocationRequest(
        invocation=pb.InvokeRequest(
            name="functions/fn",
            export_name=export,
            args=args,
            limits=invocation_limits(timeout_seconds, 0, 0),
        )
    )
    with grpc.insecure_channel(stack.gateway) as channel:
        reply, call = pb_grpc.GatewayServiceStub(channel).StartInvocation.with_call(
            request,
            metadata=(("x-tensorwasm-tenant", TENANT), ("x-request-id", request_id)),
            timeout=30,
        )
    assert dict(call.trailing_metadata())["x-request-id"] == request_id
    invocation: pb.Invocation = reply.invocation
    return invocation


def wait_until(predicate: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_finished_invocation_survives_a_gateway_restart(
    launch_stack: Callable[..., RunningStack], tmp_path: Path
) -> None:
    stack = launch_stack(tmp_path / "stack")
    with stack.client(TENANT) as client:
        client.create_function("fn", MODULE)
    request_id = f"durable-{uuid.uuid4().hex}"
    invocation = start(stack, "add", [values_pb2.Value(i32=40), values_pb2.Value(i32=2)],
                       request_id, 10)  # fmt: skip
    with stack.client(TENANT) as client:
        done = client.wait_invocation(invocation.name, 30)
    assert pb.InvocationState.Name(done.state) == "INVOCATION_STATE_SUCCEEDED", done
    assert [v.i32 for v in done.outcome.success.results] == [42]

    stack.launcher.kill("gateway")  # kill -9: no graceful close of anything
    stack.services["gateway"] = stack.launcher.start_service("gateway")
    with stack.client(TENANT) as client:
        again = client.get_invocation(invocation.name)
        listed = [i.name for i in client.list_invocations()]
    assert again.SerializeToString(deterministic=True) == done.SerializeToString(deterministic=True)
    assert invocation.name in listed
    assert len(received(stack, request_id)) == 1  # ran once, not re-run by the restart


SHORT_LEASE = {
    "TENSORWASM_GATEWAY_LEASE_HEARTBEAT_SECONDS": "0.2",
    "TENSORWASM_GATEWAY_LEASE_SECONDS": "2",
}


def test_an_invocation_running_at_a_kill_is_interrupted_not_rerun(
    launch_stack: Callable[..., RunningStack], tmp_path: Path
) -> None:
    """The restarted gateway (a new id) fails its previous incarnation's invocation once
    that incarnation's lease (2 s here) has expired."""
    stack = launch_stack(tmp_path / "stack", SHORT_LEASE)
    with stack.client(TENANT) as client:
        client.create_function("fn", MODULE)
    request_id = f"spin-{uuid.uuid4().hex}"
    invocation = start(stack, "spin", [], request_id, 20)  # spins within its 20 s deadline
    with stack.client(TENANT) as client:
        running = pb.INVOCATION_STATE_RUNNING
        wait_until(lambda: client.get_invocation(invocation.name).state == running)
    wait_until(lambda: len(received(stack, request_id)) == 1)  # the executor has it

    stack.launcher.kill("gateway")
    stack.services["gateway"] = stack.launcher.start_service("gateway")
    with stack.client(TENANT) as client:
        failed = pb.INVOCATION_STATE_FAILED
        wait_until(lambda: client.get_invocation(invocation.name).state == failed, 15)
        after = client.get_invocation(invocation.name)
        assert after.error.reason == "INVOCATION_INTERRUPTED"
        assert after.error.code == grpc.StatusCode.ABORTED.value[0]
        time.sleep(1.0)  # a re-run, if the new gateway made one, would show by now
        assert pb.InvocationState.Name(client.get_invocation(invocation.name).state) == (
            "INVOCATION_STATE_FAILED"
        )
    assert len(received(stack, request_id)) == 1  # the executor received it exactly once
    # the new gateway still runs new invocations (and they are logged under their own id)
    other = f"after-{uuid.uuid4().hex}"
    fresh = start(stack, "add", [values_pb2.Value(i32=1), values_pb2.Value(i32=2)], other, 10)
    with stack.client(TENANT) as client:
        done = client.wait_invocation(fresh.name, 30)
    assert [v.i32 for v in done.outcome.success.results] == [3]
    assert len(received(stack, other)) == 1
    assert len(received(stack, request_id)) == 1


def test_the_gateway_returns_the_request_id(stack: RunningStack, tenant: str) -> None:
    """gRPC trailers on success and on error; an HTTP response header; the same id sent
    on to the executor."""
    with stack.client(tenant) as client:
        client.create_function("fn", MODULE)
    metadata = (("x-tensorwasm-tenant", tenant),)
    invoke = pb.InvokeRequest(name="functions/fn", export_name="add",
                              args=[values_pb2.Value(i32=1), values_pb2.Value(i32=1)])  # fmt: skip
    with grpc.insecure_channel(stack.gateway) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        _, call = stub.Invoke.with_call(invoke, metadata=metadata, timeout=30)
        chosen = dict(call.trailing_metadata())["x-request-id"]
        assert len(chosen) == 32
        assert len(received(stack, chosen)) == 1
        _, call = stub.Invoke.with_call(
            invoke, metadata=(*metadata, ("x-request-id", "mine-1")), timeout=30
        )
        assert dict(call.trailing_metadata())["x-request-id"] == "mine-1"
        with pytest.raises(grpc.RpcError) as failed:
            stub.GetFunction(pb.GetFunctionRequest(name="functions/absent"), metadata=metadata,
                             timeout=30)  # fmt: skip
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        trailers = dict(failed.value.trailing_metadata())
        assert len(trailers["x-request-id"]) == 32
        assert rpc_status.from_call(failed.value) is not None  # the rich status is still there

    import urllib.error
    import urllib.request

    http = stack.services["gateway"].http_address
    request = urllib.request.Request(
        f"http://{http}/functions/absent/invoke", data=b"{}", method="POST",
        headers={"x-tensorwasm-tenant": tenant, "x-request-id": "http-req-7"},
    )  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=30)
    assert answer.value.code == 404
    assert answer.value.headers["x-request-id"] == "http-req-7"
    answer.value.close()
    request = urllib.request.Request(
        f"http://{http}/functions/fn/invoke", data=b'{"export": "add", "args": [2, 3]}',
        method="POST", headers={"x-tensorwasm-tenant": tenant},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert json.loads(reply.read())["result"] == [5]
        chosen = reply.headers["x-request-id"]
    assert len(chosen) == 32
    assert len(received(stack, chosen)) == 1  # the face's id reached the executor
