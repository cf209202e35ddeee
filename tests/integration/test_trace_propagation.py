"""A request is one trace across the processes it crosses (W3C traceparent over gRPC).

Spans are read back from the JSON-lines files that each service exports to
(<data_dir>/traces/<service>.jsonl, batched every 200 ms), polling until the expected
spans arrive.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import wasmtime
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm.gateway.v1 import gateway_service_pb2 as gateway_pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as gateway_pb_grpc
from tensorwasm_client.client import GatewayClient

pytestmark = pytest.mark.integration

Span = dict[str, Any]
GATEWAY = "/tensorwasm.gateway.v1.GatewayService/"
EXECUTOR = "/tensorwasm.executor.v1.ExecutorService/"
SNAPSHOT = "/tensorwasm.snapshot.v1.SnapshotStoreService/"


# The spans of one deploy: (key, service, kind, name, key of the parent span).
DEPLOY_CHAIN = [
    ("put_client", "gateway", "CLIENT", SNAPSHOT + "PutBlob", "root"),
    ("put_server", "snapshot", "SERVER", SNAPSHOT + "PutBlob", "put_client"),
    ("prepare_client", "gateway", "CLIENT", EXECUTOR + "PrepareModule", "root"),
    ("prepare_server", "executor", "SERVER", EXECUTOR + "PrepareModule", "prepare_client"),
    ("get_client", "executor", "CLIENT", SNAPSHOT + "GetBlob", "prepare_server"),
    ("get_server", "snapshot", "SERVER", SNAPSHOT + "GetBlob", "get_client"),
]


def read_spans(data_dir: Path) -> list[Span]:
    """Every complete span line of every service's trace file."""
    spans = []
    for path in sorted((data_dir / "traces").glob("*.jsonl")):
        *complete, _partial = path.read_text().split("\n")
        spans.extend(json.loads(line) for line in complete if line)
    return spans


def poll(find: Callable[[list[Span]], dict[str, Span] | None], data_dir: Path) -> dict[str, Span]:
    """Re-reads the trace files until `find` succeeds (10 s at most), else fails the test."""
    deadline = time.monotonic() + 60.0  # generous: span export is batched, machines loaded
    while True:
        spans = read_spans(data_dir)
        found = find(spans)
        if found is not None:
            return found
        if time.monotonic() > deadline:
            pytest.fail(
                "spans never arrived; those seen:\n"
                + "\n".join(f"{s['service']} {s['kind']} {s['name']}" for s in spans[-40:])
            )
        time.sleep(0.1)


def one(spans: list[Span], service: str, kind: str, name: str, **fields: Any) -> Span | None:
    matches = [
        s
        for s in spans
        if s["service"] == f"tensorwasm-{service}"
        and s["kind"] == kind
        and s["name"] == name
        and all(s[k] == v for k, v in fields.items())
    ]
    assert len(matches) <= 1, matches
    return matches[0] if matches else None


def unique_module() -> bytes:
    """A module no executor has compiled yet, so deploying it must fetch it from the store."""
    nonce = secrets.randbits(31)
    return bytes(
        wasmtime.wat2wasm(f'(module (func (export "nonce") (result i32) (i32.const {nonce})))')
    )


def test_deploy_is_one_trace_through_gateway_executor_and_store(
    stack: Any, client: GatewayClient
) -> None:
    started_ns = time.time_ns()
    client.create_function("traced", unique_module())

    def chain(spans: list[Span]) -> dict[str, Span] | None:
        roots = [
            s
            for s in spans
            if s["service"] == "tensorwasm-gateway"
            and s["name"] == GATEWAY + "CreateFunction"
            and s["start_time_unix_nano"] >= started_ns
        ]
        if not roots:
            return None
        assert len(roots) == 1, roots
        in_trace = [s for s in spans if s["trace_id"] == roots[0]["trace_id"]]
        found = {"root": roots[0]}
        for key, service, kind, name, parent in DEPLOY_CHAIN:
            span = one(in_trace, service, kind, name, parent_span_id=found[parent]["span_id"])
            if span is None:
                return None
            found[key] = span
        return found

    found = poll(chain, stack.data_dir)

    assert found["root"]["kind"] == "SERVER"
    assert found["root"]["parent_span_id"] is None  # the client sent no trace context
    assert {s["trace_id"] for s in found.values()} == {found["root"]["trace_id"]}
    assert {s["service"] for s in found.values()} == {
        "tensorwasm-gateway",
        "tensorwasm-executor",
        "tensorwasm-snapshot",
    }
    assert len({s["span_id"] for s in found.values()}) == 7
    assert all(s["attributes"]["rpc.grpc.status_code"] == "0" for s in found.values())


def test_the_gateway_continues_the_callers_trace(
    stack: Any, client: GatewayClient, tenant: str, wasm: Callable[[str], bytes]
) -> None:
    client.create_function("add", wasm("add"))
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    metadata = (
        ("x-tensorwasm-tenant", tenant),
        ("traceparent", f"00-{trace_id}-{parent_id}-01"),
    )
    with grpc.insecure_channel(stack.gateway) as channel:
        response = gateway_pb_grpc.GatewayServiceStub(channel).Invoke(
            gateway_pb.InvokeRequest(name="functions/add", args=[Value(i32=2), Value(i32=2)]),
            metadata=metadata,
            timeout=30,
        )
    assert list(response.outcome.success.results) == [Value(i32=4)]

    def chain(spans: list[Span]) -> dict[str, Span] | None:
        in_trace = [s for s in spans if s["trace_id"] == trace_id]
        server = one(in_trace, "gateway", "SERVER", GATEWAY + "Invoke")
        if server is None:
            return None
        call = one(in_trace, "gateway", "CLIENT", EXECUTOR + "Invoke")
        executor = one(in_trace, "executor", "SERVER", EXECUTOR + "Invoke")
        if call is None or executor is None:
            return None
        return {"server": server, "call": call, "executor": executor}

    found = poll(chain, stack.data_dir)

    assert found["server"]["parent_span_id"] == parent_id
    assert found["call"]["parent_span_id"] == found["server"]["span_id"]
    assert found["executor"]["parent_span_id"] == found["call"]["span_id"]


DISPATCHER = "/tensorwasm.dispatcher.v1.DispatcherService/"


def test_a_guests_gpu_batches_join_the_invocations_trace(
    stack: Any, client: GatewayClient, tenant: str, cuda_guest: Callable[[str], bytes]
) -> None:
    client.create_function("vector-add", cuda_guest("cuda_vector_add"))
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    metadata = (
        ("x-tensorwasm-tenant", tenant),
        ("traceparent", f"00-{trace_id}-{parent_id}-01"),
    )
    with grpc.insecure_channel(stack.gateway) as channel:
        response = gateway_pb_grpc.GatewayServiceStub(channel).Invoke(
            gateway_pb.InvokeRequest(name="functions/vector-add", export_name="run"),
            metadata=metadata,
            timeout=30,
        )
    assert list(response.outcome.success.results) == [Value(i32=0)]

    def chain(spans: list[Span]) -> dict[str, Span] | None:
        in_trace = [s for s in spans if s["trace_id"] == trace_id]
        executor = one(in_trace, "executor", "SERVER", EXECUTOR + "Invoke")
        calls = [
            s
            for s in in_trace
            if s["service"] == "tensorwasm-executor" and s["name"] == DISPATCHER + "Execute"
        ]
        served = [
            s for s in in_trace if s["service"] == "tensorwasm-dispatcher" and s["kind"] == "SERVER"
        ]
        # the load, the launch at sync, the end of the session
        if executor is None or len(calls) < 3 or len(served) < 3:
            return None
        return {"executor": executor, **{f"call{i}": c for i, c in enumerate(calls)},
                **{f"served{i}": s for i, s in enumerate(served)}}  # fmt: skip

    found = poll(chain, stack.data_dir)
    calls = [s for k, s in found.items() if k.startswith("call")]
    served = [s for k, s in found.items() if k.startswith("served")]
    assert len(calls) == len(served) == 3
    assert all(c["kind"] == "CLIENT" for c in calls)
    assert {c["parent_span_id"] for c in calls} == {found["executor"]["span_id"]}
    assert {s["parent_span_id"] for s in served} == {c["span_id"] for c in calls}
    assert {s["name"] for s in served} == {DISPATCHER + "Execute"}
