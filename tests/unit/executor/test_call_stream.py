"""Unit tests for the executor's Calls stream (tensorwasm_executor.call_stream), driven by a
raw client stream against a real grpc.aio server whose Calls is served by `CallStreams`,
with small behaviours wrapped by a real `HopInterceptor` as the executor wraps its unary
handlers (the same server serves them unary too, for comparison)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import trace
from prometheus_client import REGISTRY
from tensorwasm.common.v1 import invocation_pb2
from tensorwasm.executor.v1 import executor_service_pb2 as pb
from tensorwasm.executor.v1 import executor_service_pb2_grpc as pb_grpc
from tensorwasm_common.channels import REQUEST_ID_KEY
from tensorwasm_common.errors import NotFoundError
from tensorwasm_common.frames import MAX_ANSWER_KEY
from tensorwasm_common.interceptors import HopInterceptor
from tensorwasm_executor.call_stream import CallStreams

from tests.asyncio_waits import WAIT_SECONDS, run, until

SERVICE = pb.DESCRIPTOR.services_by_name["ExecutorService"].full_name
INVOKE = f"/{SERVICE}/Invoke"
CALL_INSTANCE = f"/{SERVICE}/CallInstance"
CALLS = f"/{SERVICE}/Calls"
HOP_SERVICE = "executor"
# The stdout of the `big` export's answer, and a cap on answers that it exceeds.
BIG = 10_000
CAP = 4_096


def answer(request: Any) -> Any:
    outcome = invocation_pb2.InvocationOutcome(stdout=request.export_name.encode())
    if isinstance(request, pb.CallInstanceRequest):
        return pb.CallInstanceResponse(outcome=outcome)
    return pb.InvokeResponse(outcome=outcome)


class Script:
    """The behaviour of every call, by its export name: `wait-*` waits until released
    (noting a cancellation), `missing` raises a typed NOT_FOUND, `abort` aborts the call
    FAILED_PRECONDITION, `observe` records its trace id and request ids; anything else
    answers at once. Each call's export is noted as it arrives."""

    def __init__(self) -> None:
        self.arrived: list[str] = []
        self.cancelled: list[str] = []
        self.observed: list[tuple[int, list[str]]] = []
        self._gates: dict[str, asyncio.Event] = {}

    def gate(self, export: str) -> asyncio.Event:
        return self._gates.setdefault(export, asyncio.Event())

    async def __call__(self, request: Any, context: Any) -> Any:
        export = request.export_name
        self.arrived.append(export)
        if export.startswith("wait"):
            try:
                await self.gate(export).wait()
            except asyncio.CancelledError:
                self.cancelled.append(export)
                raise
        elif export == "missing":
            raise NotFoundError("no such module", metadata={"module_digest": "ab" * 32})
        elif export == "abort":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "not in this state")
        elif export == "big":
            return pb.InvokeResponse(outcome=invocation_pb2.InvocationOutcome(stdout=bytes(BIG)))
        elif export == "observe":
            ids = [v for k, v in context.invocation_metadata() if k == REQUEST_ID_KEY]
            self.observed.append((trace.get_current_span().get_span_context().trace_id, ids))
        return answer(request)


class Executor(pb_grpc.ExecutorServiceServicer):
    """Invoke and CallInstance run the script, unary or as frames of Calls."""

    def __init__(self, hop: HopInterceptor, script: Script) -> None:
        self._script = script
        self.streams = CallStreams(
            {
                "invoke": (INVOKE, hop.frame_behavior(INVOKE, script)),
                "call_instance": (CALL_INSTANCE, hop.frame_behavior(CALL_INSTANCE, script)),
            }
        )

    async def Invoke(self, request: pb.InvokeRequest, context: Any) -> Any:
        return await self._script(request, context)

    async def Calls(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        await self.streams.serve(context)


class Client:
    """A raw Calls stream to the server, and its unary stub."""

    def __init__(self, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]) -> None:
        self.stub = pb_grpc.ExecutorServiceStub(channel)
        self.call: Any = channel.stream_stream(
            CALLS,
            request_serializer=pb.CallsRequest.SerializeToString,
            response_deserializer=pb.CallsResponse.FromString,
        )(metadata=metadata)

    async def write(self, frame: pb.CallsRequest) -> None:
        await self.call.write(frame)

    async def read(self) -> Any:
        async with asyncio.timeout(WAIT_SECONDS):
            return await self.call.read()

    async def open(self) -> None:
        first = await self.read()
        assert first == pb.CallsResponse()  # call_id 0, no result: the stream is open

    async def finish(self) -> None:
        """Half-closes; the stream must then end OK with no other frame."""
        await self.call.done_writing()
        assert await self.read() is grpc.aio.EOF
        assert await self.call.code() == grpc.StatusCode.OK


def invoke(call_id: int, export: str, **fields: Any) -> pb.CallsRequest:
    return pb.CallsRequest(call_id=call_id, invoke=pb.InvokeRequest(export_name=export), **fields)


def cancel(call_id: int) -> pb.CallsRequest:
    return pb.CallsRequest(call_id=call_id, cancel=pb.CallsCancel())


@contextlib.asynccontextmanager
async def serving(
    metadata: tuple[tuple[str, str], ...] = (), executors: list[Executor] | None = None
) -> AsyncIterator[tuple[Client, Script]]:
    """A server and a client stream opened with `metadata`; the servicer is appended to
    `executors`, for a test that acts on it."""
    hop = HopInterceptor(HOP_SERVICE)
    script = Script()
    server = grpc.aio.server(interceptors=[hop])
    executor = Executor(hop, script)
    if executors is not None:
        executors.append(executor)
    pb_grpc.add_ExecutorServiceServicer_to_server(executor, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            client = Client(channel, metadata)
            try:
                yield client, script
            finally:
                client.call.cancel()
    finally:
        await server.stop(None)


def requests_counted(method: str, code: str) -> float:
    labels = {"service": HOP_SERVICE, "method": method, "code": code}
    return REGISTRY.get_sample_value("tensorwasm_grpc_server_requests_total", labels) or 0.0


def assert_refused(frame: Any, call_id: int, message: str) -> None:
    """An INVALID_ARGUMENT error frame for `call_id` with one ErrorInfo."""
    assert frame.call_id == call_id
    assert frame.WhichOneof("result") == "error"
    assert frame.error.code == code_pb2.INVALID_ARGUMENT
    assert message in frame.error.message
    [detail] = frame.error.details
    info = error_details_pb2.ErrorInfo()
    assert detail.Unpack(info)
    assert info.reason == "INVALID_ARGUMENT"
    assert info.domain == "executor.tensorwasm.dev"
    assert dict(info.metadata) == {"call_id": str(call_id)}


def test_the_stream_opens_with_an_empty_frame_and_answers_each_call_by_its_id() -> None:
    async def scenario() -> None:
        async with serving() as (client, _script):
            await client.open()
            await client.write(invoke(3, "run"))
            reply = await client.read()
            assert reply.call_id == 3
            assert reply.invoke.outcome.stdout == b"run"
            instance_call = pb.CallInstanceRequest(instance_id="i-1", export_name="on-instance")
            await client.write(pb.CallsRequest(call_id=4, call_instance=instance_call))
            reply = await client.read()
            assert reply.call_id == 4
            assert reply.call_instance.outcome.stdout == b"on-instance"
            await client.finish()

    run(scenario)


def test_frames_that_start_no_call_are_refused_and_the_stream_goes_on() -> None:
    async def scenario() -> None:
        async with serving() as (client, script):
            await client.open()
            await client.write(invoke(0, "zero"))
            assert_refused(await client.read(), 0, "call_id 0 is reserved")
            await client.write(pb.CallsRequest(call_id=5))  # no call in it
            assert_refused(await client.read(), 5, "no call")
            await client.write(invoke(7, "wait-7"))
            await until(lambda: script.arrived == ["wait-7"])
            await client.write(invoke(7, "again"))  # 7 is still running
            assert_refused(await client.read(), 7, "already running")
            assert script.arrived == ["wait-7"]  # neither refused call ran
            script.gate("wait-7").set()
            reply = await client.read()
            assert (reply.call_id, reply.invoke.outcome.stdout) == (7, b"wait-7")
            await client.write(invoke(8, "after"))
            reply = await client.read()
            assert (reply.call_id, reply.invoke.outcome.stdout) == (8, b"after")
            await client.finish()

    run(scenario)


def test_after_the_client_half_closes_running_calls_are_answered_then_it_ends_ok() -> None:
    async def scenario() -> None:
        async with serving() as (client, script):
            await client.open()
            await client.write(invoke(1, "wait-1"))
            await client.write(invoke(2, "wait-2"))
            await until(lambda: sorted(script.arrived) == ["wait-1", "wait-2"])
            await client.call.done_writing()
            script.gate("wait-2").set()
            reply = await client.read()
            assert (reply.call_id, reply.invoke.outcome.stdout) == (2, b"wait-2")
            script.gate("wait-1").set()
            reply = await client.read()
            assert (reply.call_id, reply.invoke.outcome.stdout) == (1, b"wait-1")
            assert await client.read() is grpc.aio.EOF
            assert await client.call.code() == grpc.StatusCode.OK
            assert script.cancelled == []

    run(scenario)


def test_a_cancel_frame_stops_its_call_and_no_answer_comes_for_it() -> None:
    async def scenario() -> None:
        async with serving() as (client, script):
            await client.open()
            await client.write(invoke(1, "wait-1"))
            await client.write(invoke(2, "wait-2"))
            await until(lambda: sorted(script.arrived) == ["wait-1", "wait-2"])
            await client.write(cancel(1))
            await until(lambda: script.cancelled == ["wait-1"])
            script.gate("wait-2").set()
            reply = await client.read()  # the next frame answers 2, not 1
            assert (reply.call_id, reply.invoke.outcome.stdout) == (2, b"wait-2")
            await client.write(cancel(99))  # nothing running under that id: ignored
            await client.finish()  # and no frame for 1 at the end either

    run(scenario)


def test_a_call_past_its_frame_deadline_is_stopped_unanswered_as_deadline_exceeded() -> None:
    async def scenario() -> None:
        before = requests_counted(INVOKE, "DEADLINE_EXCEEDED")
        async with serving() as (client, script):
            await client.open()
            frame = invoke(1, "wait-forever")
            frame.timeout.FromMilliseconds(100)
            await client.write(frame)
            await until(lambda: script.cancelled == ["wait-forever"])
            await client.finish()  # no answer: the caller's own timer ends its call
        assert requests_counted(INVOKE, "DEADLINE_EXCEEDED") == before + 1

    run(scenario)


def test_a_typed_error_is_answered_with_the_status_the_unary_call_ends_with() -> None:
    async def scenario() -> None:
        async with serving() as (client, _script):
            await client.open()
            await client.write(invoke(1, "missing"))
            reply = await client.read()
            assert reply.call_id == 1
            assert reply.WhichOneof("result") == "error"
            try:
                await client.stub.Invoke(pb.InvokeRequest(export_name="missing"))
            except grpc.aio.AioRpcError as exc:
                unary = rpc_status.from_call(exc)
            else:
                raise AssertionError("the unary call did not fail")
            await client.finish()
        assert unary is not None
        assert reply.error == unary
        assert reply.error.code == code_pb2.NOT_FOUND
        info = error_details_pb2.ErrorInfo()
        [detail] = reply.error.details
        assert detail.Unpack(info)
        assert (info.reason, dict(info.metadata)) == ("NOT_FOUND", {"module_digest": "ab" * 32})

    run(scenario)


def test_an_aborted_call_is_answered_with_its_status_as_the_unary_call_is() -> None:
    """BUG (tensorwasm_executor/call_stream.py, CallStreams._run): a behaviour that ends
    its call with `context.abort(...)` (FrameContext.abort raises grpc's AbortError, an
    Exception, which the hop wrapper re-raises) is never answered: `_run` catches only
    CancelledError around the behaviour, so the AbortError ends the task and no frame
    is written; the gateway's caller then waits until its timeout, where the unary call
    ends at once with the aborted status."""

    async def scenario() -> None:
        async with serving() as (client, _script):
            try:
                await client.stub.Invoke(pb.InvokeRequest(export_name="abort"))
            except grpc.aio.AioRpcError as exc:
                unary = (exc.code(), exc.details())
            else:
                raise AssertionError("the unary call did not fail")
            assert unary == (grpc.StatusCode.FAILED_PRECONDITION, "not in this state")
            await client.open()
            await client.write(invoke(1, "abort"))
            await client.call.done_writing()
            reply = await client.read()
            assert reply is not grpc.aio.EOF, "the aborted call was never answered"
            assert reply.call_id == 1
            assert reply.error == status_pb2.Status(
                code=code_pb2.FAILED_PRECONDITION, message="not in this state"
            )
            assert await client.read() is grpc.aio.EOF

    run(scenario)


def test_a_frames_trace_context_and_request_id_reach_its_call() -> None:
    trace_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736

    async def scenario() -> None:
        async with serving() as (client, script):
            await client.open()
            traceparent = f"00-{trace_id:032x}-00f067aa0ba902b7-01"
            await client.write(invoke(1, "observe", traceparent=traceparent, request_id="r-1"))
            await client.write(invoke(2, "observe"))  # none: a new trace, no request id
            replies = {(await client.read()).call_id for _ in range(2)}
            assert replies == {1, 2}
            await client.finish()
        assert len(script.observed) == 2
        by_request = {tuple(ids): trace_of for trace_of, ids in script.observed}
        assert by_request[("r-1",)] == trace_id
        assert by_request[()] != trace_id  # its own (a no-op tracer's: none)

    run(scenario)


def test_carried_calls_are_counted_under_their_own_method() -> None:
    async def scenario() -> None:
        counted = {
            (method, code): requests_counted(method, code)
            for method in (INVOKE, CALL_INSTANCE, CALLS)
            for code in ("OK", "NOT_FOUND")
        }
        async with serving() as (client, _script):
            await client.open()
            await client.write(invoke(1, "run"))
            await client.read()
            await client.write(invoke(2, "missing"))
            await client.read()
            instance_call = pb.CallInstanceRequest(export_name="run")
            await client.write(pb.CallsRequest(call_id=3, call_instance=instance_call))
            await client.read()
            await client.finish()
        deltas = {key: requests_counted(*key) - value for key, value in counted.items()}
        assert deltas == {
            (INVOKE, "OK"): 1,
            (INVOKE, "NOT_FOUND"): 1,
            (CALL_INSTANCE, "OK"): 1,
            (CALL_INSTANCE, "NOT_FOUND"): 0,
            (CALLS, "OK"): 1,  # the stream itself, once it ended
            (CALLS, "NOT_FOUND"): 0,
        }

    run(scenario)


def test_a_cancelled_stream_stops_its_running_calls() -> None:
    async def scenario() -> None:
        async with serving() as (client, script):
            await client.open()
            await client.write(invoke(1, "wait-1"))
            await client.write(invoke(2, "wait-2"))
            await until(lambda: sorted(script.arrived) == ["wait-1", "wait-2"])
            client.call.cancel()  # the gateway went away
            await until(lambda: sorted(script.cancelled) == ["wait-1", "wait-2"])

    run(scenario)


def test_an_answer_over_the_clients_cap_fails_its_call_alone() -> None:
    """An answer bigger than the client said it receives would end the stream with all its
    calls: that call fails RESOURCE_EXHAUSTED, and the stream goes on."""

    async def scenario() -> None:
        async with serving(metadata=((MAX_ANSWER_KEY, str(CAP)),)) as (client, _script):
            await client.open()
            await client.write(invoke(1, "big"))
            reply = await client.read()
            assert reply.call_id == 1
            assert reply.WhichOneof("result") == "error"
            assert reply.error.code == code_pb2.RESOURCE_EXHAUSTED
            [detail] = reply.error.details
            info = error_details_pb2.ErrorInfo()
            assert detail.Unpack(info)
            assert info.reason == "RESOURCE_EXHAUSTED"
            assert info.metadata["limit_bytes"] == str(CAP)
            assert int(info.metadata["size_bytes"]) > BIG
            await client.write(invoke(2, "run"))
            reply = await client.read()
            assert (reply.call_id, reply.invoke.outcome.stdout) == (2, b"run")
            await client.finish()

    run(scenario)


def test_an_answer_within_the_clients_cap_is_sent_whole() -> None:
    async def scenario() -> None:
        async with serving(metadata=((MAX_ANSWER_KEY, str(BIG + 1024)),)) as (client, _script):
            await client.open()
            await client.write(invoke(1, "big"))
            reply = await client.read()
            assert reply.invoke.outcome.stdout == bytes(BIG)
            await client.finish()

    run(scenario)


def test_a_draining_executor_answers_new_calls_not_run_and_finishes_running_ones() -> None:
    async def scenario() -> None:
        executors: list[Executor] = []
        async with serving(executors=executors) as (client, script):
            await client.open()
            await client.write(invoke(1, "wait-running"))
            await until(lambda: "wait-running" in script.arrived)
            executors[0].streams.drain()
            await client.write(invoke(2, "late"))
            reply = await client.read()
            assert reply.call_id == 2
            assert reply.not_run
            assert reply.error.code == code_pb2.UNAVAILABLE
            assert "late" not in script.arrived  # never started
            script.gate("wait-running").set()
            reply = await client.read()
            assert (reply.call_id, reply.not_run) == (1, False)
            assert reply.invoke.outcome.stdout == b"wait-running"
            await client.finish()

    run(scenario)
