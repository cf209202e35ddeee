"""Unit tests for the gateway's Calls stream (tensorwasm_gateway.routing.call_stream, through
`ExecutorPool`): short Invoke and CallInstance calls as frames of one stream per replica,
each behaving as its unary call would. The fake executors are real grpc.aio servers whose
`Calls` is served by the executor's own `CallStreams`, with small behaviours wrapped by a
real `HopInterceptor`, as the executor wraps its handlers; their unary calls run the same
behaviours under the same interceptor, so both paths can be compared."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import REGISTRY
from tensorwasm.common.v1 import invocation_pb2
from tensorwasm.executor.v1 import executor_service_pb2 as pb
from tensorwasm.executor.v1 import executor_service_pb2_grpc as pb_grpc
from tensorwasm_common import rpc_tracing
from tensorwasm_common.channels import REQUEST_ID_KEY
from tensorwasm_common.errors import Code, NotFoundError, ServiceError
from tensorwasm_common.interceptors import HopInterceptor
from tensorwasm_executor.call_stream import CallStreams
from tensorwasm_gateway.calls import AddressedCall, InstanceCall, Target
from tensorwasm_gateway.request_ids import CURRENT_REQUEST_ID
from tensorwasm_gateway.routing.executors import ExecutorPool

from tests.asyncio_waits import WAIT_SECONDS, run, settled, until
from tests.unit.gateway.routing.test_executors import key_preferring

SERVICE = pb.DESCRIPTOR.services_by_name["ExecutorService"].full_name
INVOKE = f"/{SERVICE}/Invoke"
CALL_INSTANCE = f"/{SERVICE}/CallInstance"
CALLS = f"/{SERVICE}/Calls"
DIGEST = "ab" * 32

Behaviour = Callable[[Any, Any], Awaitable[Any]]


def answer(request: Any) -> Any:
    """The response naming the call's export (Invoke or CallInstance, by its request)."""
    outcome = invocation_pb2.InvocationOutcome(stdout=request.export_name.encode())
    if isinstance(request, pb.CallInstanceRequest):
        return pb.CallInstanceResponse(outcome=outcome)
    return pb.InvokeResponse(outcome=outcome)


async def echo(request: Any, context: Any) -> Any:
    return answer(request)


class MethodLog(grpc.aio.ServerInterceptor):
    """Records the method of every call the server receives (Calls included)."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        self.methods.append(handler_call_details.method)
        return await continuation(handler_call_details)

    def count(self, method: str) -> int:
        return self.methods.count(method)


class FakeExecutor(pb_grpc.ExecutorServiceServicer):
    """Invoke and CallInstance run `behaviour`, unary or carried by the real CallStreams;
    counts the unary calls and the streams opened."""

    def __init__(self, hop: HopInterceptor, behaviour: Behaviour = echo) -> None:
        self.behaviour = behaviour
        self.unary = 0
        self.streams = 0
        self._call_streams = CallStreams(
            {
                "invoke": (INVOKE, hop.frame_behavior(INVOKE, self._run)),
                "call_instance": (CALL_INSTANCE, hop.frame_behavior(CALL_INSTANCE, self._run)),
            }
        )

    async def _run(self, request: Any, context: Any) -> Any:
        return await self.behaviour(request, context)

    async def Invoke(self, request: pb.InvokeRequest, context: Any) -> Any:
        self.unary += 1
        return await self.behaviour(request, context)

    async def CallInstance(self, request: pb.CallInstanceRequest, context: Any) -> Any:
        self.unary += 1
        return await self.behaviour(request, context)

    async def Calls(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        self.streams += 1
        await self._call_streams.serve(context)


class OlderExecutor(pb_grpc.ExecutorServiceServicer):
    """An executor without Calls (the generated servicer answers it UNIMPLEMENTED)."""

    def __init__(self) -> None:
        self.unary = 0

    async def Invoke(self, request: pb.InvokeRequest, context: Any) -> Any:
        self.unary += 1
        return answer(request)


class Server:
    """A real grpc.aio server for a fake executor, under the hop interceptor (if any)."""

    def __init__(
        self, servicer: pb_grpc.ExecutorServiceServicer, hop: HopInterceptor | None
    ) -> None:
        self.servicer = servicer
        self.hop = hop
        self.log = MethodLog()
        self.server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Starts serving (again, on the same port, after `stop`)."""
        interceptors = [self.log] if self.hop is None else [self.log, self.hop]
        server = grpc.aio.server(interceptors=interceptors)
        pb_grpc.add_ExecutorServiceServicer_to_server(self.servicer, server)
        port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        assert port != 0
        self.port = port
        await server.start()
        self.server = server

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)
            self.server = None


@contextlib.asynccontextmanager
async def executor(behaviour: Behaviour = echo) -> AsyncIterator[tuple[Server, FakeExecutor]]:
    hop = HopInterceptor("executor")
    fake = FakeExecutor(hop, behaviour)
    server = Server(fake, hop)
    await server.start()
    try:
        yield server, fake
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def pool_of(
    addresses: list[str], *, call_timeout: float = 30.0, **options: Any
) -> AsyncIterator[ExecutorPool]:
    pool = ExecutorPool(
        tuple(addresses), max_message_bytes=4 << 20, timeout=call_timeout, **options
    )
    try:
        yield pool
    finally:
        await pool.close()


def call_of(export: str, *, digest: str = DIGEST, data: bytes = b"") -> AddressedCall:
    return AddressedCall(Target(tenant="", module_digest=digest), export, input=data)


def streams_opened(address: str) -> float:
    """The gateway's count of call streams opened to the replica at `address`."""
    sample = REGISTRY.get_sample_value(
        "tensorwasm_gateway_executor_call_streams_opened_total", {"replica": address}
    )
    return sample or 0.0


def as_tuple(error: ServiceError) -> tuple[Any, ...]:
    return (
        error.code,
        error.reason,
        error.message,
        error.domain,
        error.metadata,
        error.retry_after_seconds,
    )


class Blocking:
    """A behaviour that records each call's arrival and waits until the test releases it
    (`release(export)`), noting the calls that were cancelled meanwhile."""

    def __init__(self) -> None:
        self.arrived: list[str] = []
        self.cancelled: list[str] = []
        self.any_cancelled = asyncio.Event()
        self._gates: dict[str, asyncio.Event] = {}

    def gate(self, export: str) -> asyncio.Event:
        return self._gates.setdefault(export, asyncio.Event())

    def release(self, export: str) -> None:
        self.gate(export).set()

    async def __call__(self, request: Any, context: Any) -> Any:
        self.arrived.append(request.export_name)
        try:
            await self.gate(request.export_name).wait()
        except asyncio.CancelledError:
            self.cancelled.append(request.export_name)
            self.any_cancelled.set()
            raise
        return answer(request)


def test_concurrent_calls_share_one_stream_and_each_gets_its_own_answer_out_of_order() -> None:
    async def scenario() -> None:
        blocking = Blocking()
        async with executor(blocking) as (server, fake), pool_of([server.address]) as pool:
            opened = streams_opened(server.address)  # a port may have served another test
            exports = [f"call-{i}" for i in range(8)]
            tasks = {e: asyncio.create_task(pool.invoke(call_of(e))) for e in exports}
            await until(lambda: len(blocking.arrived) == len(exports))
            for index in reversed(range(len(exports))):  # each answered before earlier ones
                blocking.release(exports[index])
                async with asyncio.timeout(WAIT_SECONDS):
                    result = await tasks[exports[index]]
                assert result.outcome.stdout == exports[index].encode()
                assert not any(tasks[e].done() for e in exports[:index])
            assert (fake.streams, fake.unary) == (1, 0)
            assert server.log.count(CALLS) == 1
            assert server.log.count(INVOKE) == 0
            assert streams_opened(server.address) == opened + 1

    run(scenario)


def test_instance_calls_are_carried_on_the_same_stream() -> None:
    async def scenario() -> None:
        async with executor() as (server, fake), pool_of([server.address]) as pool:
            result = await pool.invoke(call_of("first"))
            assert result.outcome.stdout == b"first"
            call = InstanceCall(tenant="", instance_id="i-1", export_name="on-instance")
            result = await pool.call_instance(server.address, call)
            assert result.outcome.stdout == b"on-instance"
            assert (fake.streams, fake.unary) == (1, 0)

    run(scenario)


def test_a_typed_error_reaches_the_caller_as_the_unary_call_gives_it() -> None:
    async def refuse(request: Any, context: Any) -> Any:
        raise NotFoundError(
            "no such module", metadata={"module_digest": DIGEST}, retry_after_seconds=2.5
        )

    async def scenario() -> None:
        async with executor(refuse) as (server, fake):
            async with pool_of([server.address]) as pool:
                with pytest.raises(ServiceError) as streamed:
                    await pool.invoke(call_of("x"))
            assert (fake.streams, fake.unary) == (1, 0)
            async with pool_of([server.address], call_stream_max_bytes=0) as pool:
                with pytest.raises(ServiceError) as unary:
                    await pool.invoke(call_of("x"))
            assert (fake.streams, fake.unary) == (1, 1)
        assert streamed.value.code == Code.NOT_FOUND
        assert streamed.value.reason == "NOT_FOUND"
        assert streamed.value.metadata == {"module_digest": DIGEST}
        assert streamed.value.retry_after_seconds == 2.5
        assert streamed.value.domain == "executor.tensorwasm.dev"
        assert as_tuple(streamed.value) == as_tuple(unary.value)

    run(scenario)


@pytest.mark.parametrize("stream_bytes", [65536, 0], ids=["stream", "unary"])
def test_a_call_past_its_deadline_fails_as_unary_and_stops_on_the_executor(
    stream_bytes: int,
) -> None:
    blocking_timeout = 1.0  # the pool's timeout; the behaviour never returns by itself

    async def scenario() -> None:
        blocking = Blocking()
        async with (
            executor(blocking) as (server, fake),
            pool_of(
                [server.address], call_timeout=blocking_timeout, call_stream_max_bytes=stream_bytes
            ) as pool,
        ):
            with pytest.raises(ServiceError) as caught:
                await pool.invoke(call_of("slow"))
            await settled(blocking.any_cancelled)
            assert blocking.cancelled == ["slow"]
            assert (fake.streams, fake.unary) == ((1, 0) if stream_bytes else (0, 1))
        # downstream_error maps the executor call's DEADLINE_EXCEEDED (unary or frame)
        # to UNAVAILABLE naming the executor
        assert caught.value.code == Code.UNAVAILABLE
        assert caught.value.reason == "UPSTREAM_UNAVAILABLE"
        assert caught.value.message == (
            f"executor {server.address} is unavailable: Deadline Exceeded"
        )
        assert caught.value.metadata == {"dependency": f"executor {server.address}"}

    run(scenario)


def test_a_caller_that_gives_up_cancels_the_call_on_the_executor() -> None:
    async def scenario() -> None:
        blocking = Blocking()
        async with (
            executor(blocking) as (server, fake),
            # a deadline far beyond the wait below: only the cancel frame can stop the call
            pool_of([server.address], call_timeout=3600.0) as pool,
        ):
            waiting = asyncio.create_task(pool.invoke(call_of("abandoned")))
            await until(lambda: blocking.arrived == ["abandoned"])
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await settled(blocking.any_cancelled)  # the cancel frame stopped it
            assert blocking.cancelled == ["abandoned"]
            # the stream goes on carrying calls
            blocking.release("later")
            result = await pool.invoke(call_of("later"))
            assert result.outcome.stdout == b"later"
            assert (fake.streams, fake.unary) == (1, 0)
            assert pool._replicas[server.address].in_flight == 0
            calls = pool._replicas[server.address].calls
            assert calls is not None and calls.in_flight == 0

    run(scenario)


def test_a_lost_stream_fails_its_calls_unavailable_without_failover_then_reopens() -> None:
    async def scenario() -> None:
        blocking = Blocking()
        async with executor(blocking) as (first, first_fake), executor() as (second, other):
            replicas = [first.address, second.address]
            key = key_preferring(first.address, replicas)
            async with pool_of(replicas) as pool:
                waiting = asyncio.create_task(pool.invoke(call_of("lost", digest=key)))
                await until(lambda: blocking.arrived == ["lost"])
                await first.stop()  # the executor goes away mid-call
                with pytest.raises(ServiceError) as caught:
                    await waiting
                assert caught.value.code == Code.UNAVAILABLE
                assert caught.value.reason == "UPSTREAM_UNAVAILABLE"
                # failed when the stream was lost, not at its own deadline
                assert "call stream" in caught.value.message
                assert first.address in caught.value.message
                await settled(blocking.any_cancelled)  # stopped with its stream
                # it may have run: never resent to the other replica
                assert (other.streams, other.unary) == (0, 0)
                assert second.log.methods == []

                opened_before = streams_opened(first.address) + streams_opened(second.address)
                await first.start()  # back on the same port
                blocking.release("after")
                result = await pool.invoke(call_of("after", digest=key))
                assert result.outcome.stdout == b"after"
                # a new stream, on whichever replica the call could reach
                assert first_fake.streams + other.streams == 2
                assert (first_fake.unary, other.unary) == (0, 0)
                opened = streams_opened(first.address) + streams_opened(second.address)
                assert opened == opened_before + 1

    run(scenario)


def test_closing_the_pool_fails_the_calls_waiting_on_its_streams() -> None:
    async def scenario() -> None:
        blocking = Blocking()
        async with executor(blocking) as (server, _fake):
            pool = ExecutorPool((server.address,), max_message_bytes=4 << 20, timeout=3600.0)
            waiting = asyncio.create_task(pool.invoke(call_of("open")))
            await until(lambda: blocking.arrived == ["open"])
            await pool.close()
            with pytest.raises(ServiceError) as caught:
                await waiting
            assert caught.value.code == Code.UNAVAILABLE
            assert "closing" in caught.value.message
            await settled(blocking.any_cancelled)  # its stream ended: the call stopped

    run(scenario)


def test_a_request_bigger_than_the_stream_limit_goes_unary() -> None:
    async def scenario() -> None:
        async with (
            executor() as (server, fake),
            pool_of([server.address], call_stream_max_bytes=1024) as pool,
        ):
            result = await pool.invoke(call_of("big", data=b"x" * 4096))
            assert result.outcome.stdout == b"big"
            assert (fake.streams, fake.unary) == (0, 1)
            assert server.log.count(CALLS) == 0
            result = await pool.invoke(call_of("small", data=b"x" * 16))
            assert result.outcome.stdout == b"small"
            assert (fake.streams, fake.unary) == (1, 1)

    run(scenario)


def test_an_executor_without_calls_is_called_unary_and_the_stream_is_tried_once() -> None:
    async def scenario() -> None:
        older = OlderExecutor()
        # no hop interceptor: it would answer the generated servicer's NotImplementedError
        # INTERNAL, where an older executor's grpc answers UNIMPLEMENTED
        server = Server(older, None)
        await server.start()
        try:
            async with pool_of([server.address]) as pool:
                first = await asyncio.gather(*(pool.invoke(call_of(f"c{i}")) for i in range(4)))
                assert [r.outcome.stdout for r in first] == [f"c{i}".encode() for i in range(4)]
                for i in range(3):
                    result = await pool.invoke(call_of(f"later-{i}"))
                    assert result.outcome.stdout == f"later-{i}".encode()
                assert older.unary == 7
                assert server.log.count(CALLS) == 1
                assert server.log.count(INVOKE) == 7
        finally:
            await server.stop()

    run(scenario)


@contextlib.contextmanager
def span_recording(recording: bool | None) -> Iterator[None]:
    rpc_tracing.set_span_recording(recording)
    try:
        yield
    finally:
        rpc_tracing.set_span_recording(None)


@pytest.mark.parametrize("stream_bytes", [65536, 0], ids=["stream", "unary"])
@pytest.mark.parametrize("recording", [None, False], ids=["spans", "no-spans"])
def test_the_callers_trace_id_and_request_id_reach_the_executor(
    stream_bytes: int, recording: bool | None
) -> None:
    trace_id = 0x0AF7651916CD43DD8448EB211C80319C
    span_id = 0xB7AD6B7169203331
    seen: list[tuple[int, int, list[str]]] = []

    async def observe(request: Any, context: Any) -> Any:
        current = trace.get_current_span().get_span_context()
        request_ids = [v for k, v in context.invocation_metadata() if k == REQUEST_ID_KEY]
        seen.append((current.trace_id, current.span_id, request_ids))
        return answer(request)

    async def scenario() -> None:
        async with (
            executor(observe) as (server, fake),
            pool_of([server.address], call_stream_max_bytes=stream_bytes) as pool,
        ):
            caller = SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(1))
            token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(caller)))
            request_id = CURRENT_REQUEST_ID.set("req-7f3a")
            try:
                await pool.invoke(call_of("traced"))
            finally:
                CURRENT_REQUEST_ID.reset(request_id)
                otel_context.detach(token)
            assert (fake.streams, fake.unary) == ((1, 0) if stream_bytes else (0, 1))

    with span_recording(recording):
        run(scenario)
    [(seen_trace, seen_span, request_ids)] = seen
    assert seen_trace == trace_id
    if recording is False:  # the executor's own span id (no-op spans keep the caller's)
        assert seen_span != span_id
    assert request_ids == ["req-7f3a"]


class Stalled(FakeExecutor):
    """Takes Calls streams but never opens them (their first frame never comes): a
    replica that is connected but stuck."""

    async def Calls(self, request_iterator: Any, context: Any) -> None:  # type: ignore[override]
        self.streams += 1
        await asyncio.Event().wait()


def test_a_call_whose_stream_never_opens_still_ends_at_its_deadline() -> None:
    """BUG (routing/call_stream.py, CallStream.call/_open): the call's timeout timer is
    armed only once the stream is open, and `_open` waits for the executor's first frame
    with no deadline, so every call to a replica whose Calls stream is accepted but never
    opened waits forever, where its unary call would end DEADLINE_EXCEEDED."""

    async def scenario() -> None:
        hop = HopInterceptor("executor")
        stalled = Stalled(hop)
        server = Server(stalled, hop)
        await server.start()
        try:
            async with pool_of([server.address], call_timeout=1.0) as pool:
                with pytest.raises(ServiceError) as caught:
                    # 20 times the call's timeout: only turns the hang into a failure
                    async with asyncio.timeout(20.0):
                        await pool.invoke(call_of("stuck"))
                assert caught.value.code == Code.UNAVAILABLE
                assert stalled.streams == 1
        finally:
            await server.stop()

    run(scenario)


def test_a_call_a_draining_executor_did_not_run_goes_to_the_next_replica() -> None:
    """An executor shutting down answers new frames not run: the call goes to the next
    replica (it never started, so it runs once), and the gateway stops using that stream."""

    async def scenario() -> None:
        ran: dict[str, list[str]] = {"first": [], "second": []}

        def recording(name: str) -> Behaviour:
            async def behaviour(request: Any, context: Any) -> Any:
                ran[name].append(request.export_name)
                return answer(request)

            return behaviour

        async with (
            executor(recording("first")) as (first, first_fake),
            executor(recording("second")) as (second, second_fake),
        ):
            addresses = [first.address, second.address]
            key = key_preferring(first.address, addresses)
            async with pool_of(addresses) as pool:
                result = await pool.invoke(call_of("before", digest=key))
                assert result.outcome.stdout == b"before"
                assert ran == {"first": ["before"], "second": []}
                first_fake._call_streams.drain()
                result = await pool.invoke(call_of("during", digest=key))
                assert result.outcome.stdout == b"during"
                assert ran == {"first": ["before"], "second": ["during"]}
                assert (first_fake.unary, second_fake.unary) == (0, 0)
                # `first` is routed last until its health is checked again, and its
                # drained stream is given up: a call to it opens a new one
                assert pool.order(key) == [second.address, first.address]
                calls = pool._replicas[first.address].calls
                assert calls is not None and calls._call is None

    run(scenario)
