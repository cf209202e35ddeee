"""Unit tests for the gateway's InvokeStream: resolution as for Invoke, relaying, cancel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from tensorwasm.common.v1 import invocation_pb2, values_pb2
from tensorwasm.executor.v1 import executor_service_pb2 as executor_pb
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm_common.channels import TENANT_METADATA_KEY
from tensorwasm_gateway.calls import AddressedCall
from tensorwasm_gateway.errors import ExportRequiredError, FunctionNotFoundError
from tensorwasm_gateway.functions.registry import ExportRecord, FunctionRecord, Registry
from tensorwasm_gateway.functions.service import FunctionService
from tensorwasm_gateway.routing.executors import invoke_request
from tensorwasm_gateway.servicer import GatewayServicer
from tensorwasm_gateway.wire import FUNCTION_CONFIGS

DIGEST = "ef" * 32
STDOUT = invocation_pb2.OUTPUT_STREAM_STDOUT


class FakeContext:
    """The parts of grpc.aio.ServicerContext the servicer uses."""

    def __init__(self, tenant: str) -> None:
        self._metadata = ((TENANT_METADATA_KEY, tenant),)
        self.done_callbacks: list[Callable[[Any], None]] = []

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self.done_callbacks.append(callback)


class FakeStream:
    """An executor stream: fixed events, and whether it was cancelled."""

    def __init__(self, events: Sequence[executor_pb.InvokeStreamResponse]) -> None:
        self._events = list(events)
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    async def __aiter__(self) -> AsyncIterator[executor_pb.InvokeStreamResponse]:
        for event in self._events:
            yield event


class FakeExecutors:
    def __init__(self) -> None:
        self.streamed: list[executor_pb.InvokeRequest] = []
        self.streams: list[FakeStream] = []

    async def invoke_stream(self, call: AddressedCall) -> FakeStream:
        self.streamed.append(invoke_request(call))  # what the executor would receive
        stream = FakeStream(
            [
                executor_pb.InvokeStreamResponse(
                    output=invocation_pb2.OutputChunk(stream=STDOUT, data=b"hi\n")
                ),
                executor_pb.InvokeStreamResponse(
                    outcome=invocation_pb2.InvocationOutcome(
                        success=invocation_pb2.InvocationSuccess(results=[values_pb2.Value(i32=1)])
                    )
                ),
            ]
        )
        self.streams.append(stream)
        return stream


class UnusedStore:
    async def put(self, data: bytes, **options: object) -> object:
        raise AssertionError("not used")

    async def remove_ref(self, digest: str, ref_name: str, **options: object) -> bool:
        return True  # deleting a function drops its reference


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "registry.sqlite3")
    reg.insert(FunctionRecord("acme", "one", DIGEST, 8, (ExportRecord("main", (), ("i32",)),), 1))
    reg.insert(
        FunctionRecord(
            "acme",
            "two",
            DIGEST,
            8,
            (ExportRecord("a", (), ()), ExportRecord("b", (), ())),
            1,
        )
    )
    yield reg
    reg.close()


def _servicer(registry: Registry, executors: FakeExecutors) -> GatewayServicer:
    pool: Any = executors
    return GatewayServicer(
        FunctionService(
            registry, UnusedStore(), pool, max_module_bytes=1024, configs=FUNCTION_CONFIGS
        )
    )


def _request(name: str, export: str = "") -> pb.InvokeStreamRequest:
    return pb.InvokeStreamRequest(
        invocation=pb.InvokeRequest(
            name=name,
            export_name=export,
            args=[values_pb2.Value(i64=5)],
            stdin=b"in",
            limits=invocation_pb2.InvocationLimits(max_output_bytes=77),
        )
    )


def _collect(
    servicer: GatewayServicer, request: pb.InvokeStreamRequest, context: FakeContext
) -> list[pb.InvokeStreamResponse]:
    async def scenario() -> list[pb.InvokeStreamResponse]:
        stream: Any = servicer.InvokeStream(request, context)  # type: ignore[arg-type]
        return [event async for event in stream]

    return asyncio.run(scenario())


def test_events_are_relayed_and_the_outcome_names_the_export(registry: Registry) -> None:
    executors = FakeExecutors()
    context = FakeContext("acme")

    events = _collect(_servicer(registry, executors), _request("functions/one"), context)

    assert [e.WhichOneof("event") for e in events] == ["output", "outcome"]
    assert events[0].output.data == b"hi\n"
    assert events[0].export_name == ""  # only the final message names the export
    assert events[1].export_name == "main"
    assert events[1].outcome.success.results[0].i32 == 1
    (sent,) = executors.streamed
    assert (sent.module_digest, sent.export_name, sent.tenant) == (DIGEST, "main", "acme")
    assert list(sent.args) == [values_pb2.Value(i64=5)]
    assert (sent.stdin, sent.limits.max_output_bytes) == (b"in", 77)


def test_the_end_of_the_rpc_cancels_the_executor_call(registry: Registry) -> None:
    executors = FakeExecutors()
    context = FakeContext("acme")
    _collect(_servicer(registry, executors), _request("functions/one"), context)

    (stream,) = executors.streams
    assert not stream.cancelled
    for callback in context.done_callbacks:  # grpc runs these when the RPC ends
        callback(context)
    assert stream.cancelled


@pytest.mark.parametrize(
    ("name", "export", "error"),
    [
        ("functions/missing", "", FunctionNotFoundError),
        ("functions/two", "", ExportRequiredError),
    ],
)
def test_request_errors_come_before_any_call(
    registry: Registry, name: str, export: str, error: type[Exception]
) -> None:
    executors = FakeExecutors()
    with pytest.raises(error):
        _collect(_servicer(registry, executors), _request(name, export), FakeContext("acme"))
    assert executors.streamed == []


def test_another_tenant_does_not_see_the_function(registry: Registry) -> None:
    executors = FakeExecutors()
    with pytest.raises(FunctionNotFoundError):
        _collect(_servicer(registry, executors), _request("functions/one"), FakeContext("globex"))
