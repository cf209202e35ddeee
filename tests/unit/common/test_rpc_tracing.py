"""rpc_tracing on real grpc.aio servers: trace context crosses two hops, recorded or not.

The client calls `front` (a server with TracingInterceptor), whose handler calls `back`
through a TracedChannel; `back` answers the traceparent it received and `front` adds the
span context it ran under.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import grpc
import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tensorwasm_common import rpc_tracing
from tensorwasm_common.rpc_tracing import TracedChannel, TracingInterceptor

SERVICE = "test.Trace"


def _identity(data: bytes) -> bytes:
    return data


def _traceparent(context: grpc.aio.ServicerContext) -> str:
    return next((v for k, v in context.invocation_metadata() or () if k == "traceparent"), "none")


async def _back(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"fail":
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no")
    return _traceparent(context).encode()


async def _back_stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield _traceparent(context).encode()


def _handlers(front: Callable[..., Awaitable[bytes]] | None) -> grpc.GenericRpcHandler:
    def unary(behavior: Callable[..., Any]) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=_identity, response_serializer=_identity
        )

    handlers = {
        "Back": unary(_back),
        "BackStream": grpc.unary_stream_rpc_method_handler(
            _back_stream, request_deserializer=_identity, response_serializer=_identity
        ),
    }
    if front is not None:
        handlers["Front"] = unary(front)
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def _here() -> str:
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def _run(metadata: tuple[tuple[str, str], ...], provider: TracerProvider | None = None) -> Any:
    """Calls Front (which calls Back and BackStream); returns what each hop saw."""

    async def main() -> list[str]:
        back = grpc.aio.server(interceptors=[TracingInterceptor(provider)])
        back.add_generic_rpc_handlers((_handlers(None),))
        back_port = back.add_insecure_port("127.0.0.1:0")
        await back.start()
        channel = TracedChannel(grpc.aio.insecure_channel(f"127.0.0.1:{back_port}"), provider)

        async def front(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            call = channel.unary_unary(
                f"/{SERVICE}/Back", request_serializer=_identity, response_deserializer=_identity
            )
            seen = await call(request, timeout=10)
            stream = channel.unary_stream(
                f"/{SERVICE}/BackStream",
                request_serializer=_identity,
                response_deserializer=_identity,
            )
            streamed = [chunk async for chunk in stream(b"", timeout=10)]
            return b"|".join([_here().encode(), seen, *streamed])

        server = grpc.aio.server(interceptors=[TracingInterceptor(provider)])
        server.add_generic_rpc_handlers((_handlers(front),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as client:
                call = client.unary_unary(
                    f"/{SERVICE}/Front",
                    request_serializer=_identity,
                    response_deserializer=_identity,
                )
                reply = await asyncio.wait_for(call(b"", metadata=metadata, timeout=10), 30)
        finally:
            await channel.close()
            await server.stop(5)
            await back.stop(5)
        return bytes(reply).decode().split("|")

    return asyncio.run(main())


@pytest.fixture
def unrecorded() -> Iterator[None]:
    rpc_tracing.set_span_recording(False)
    yield
    rpc_tracing.set_span_recording(None)


@pytest.mark.parametrize("flags", ["01", "00"])
def test_unrecorded_hops_continue_the_callers_trace(unrecorded: None, flags: str) -> None:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    here, back, streamed = _run((("traceparent", f"00-{trace_id}-{parent}-{flags}"),))
    here_trace, here_span, here_flags = here.split("-")
    assert (here_trace, here_flags) == (trace_id, flags)
    assert here_span not in (parent, "0" * 16)  # the hop's own span id
    # Back's parent is front's span: the structure propagates although nothing is recorded.
    assert back == streamed == f"00-{trace_id}-{here_span}-{flags}"


def test_unrecorded_hop_without_a_caller_trace_starts_one(unrecorded: None) -> None:
    here, back, _ = _run(())
    trace_id, span_id, flags = here.split("-")
    assert trace_id != "0" * 32 and span_id != "0" * 16
    assert back == f"00-{trace_id}-{span_id}-{flags}"


def test_recorded_hops_make_server_and_client_spans_in_one_trace() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    rpc_tracing.set_span_recording(True)
    try:
        trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
        here, back, streamed = _run((("traceparent", f"00-{trace_id}-{parent}-01"),), provider)
        # CLIENT spans end from a done callback: let it run before reading.
        spans = {(s.name, s.kind.name): s for s in exporter.get_finished_spans()}
    finally:
        rpc_tracing.set_span_recording(None)
    front = spans[(f"/{SERVICE}/Front", "SERVER")]
    calls = [spans[(f"/{SERVICE}/{m}", "CLIENT")] for m in ("Back", "BackStream")]
    served = [spans[(f"/{SERVICE}/{m}", "SERVER")] for m in ("Back", "BackStream")]
    assert {format(s.context.trace_id, "032x") for s in [front, *calls, *served]} == {trace_id}
    assert front.parent is not None and format(front.parent.span_id, "016x") == parent
    assert here.split("-")[1] == format(front.context.span_id, "016x")
    for call, server, seen in zip(calls, served, (back, streamed), strict=True):
        assert call.parent is not None and call.parent.span_id == front.context.span_id
        assert server.parent is not None and server.parent.span_id == call.context.span_id
        assert seen == f"00-{trace_id}-{call.context.span_id:016x}-01"
        assert call.attributes is not None and call.attributes["rpc.grpc.status_code"] == 0
    assert front.attributes is not None
    assert front.attributes["rpc.grpc.status_code"] == 0
    assert front.attributes["rpc.method"] == "Front"


def test_recorded_server_span_of_an_aborted_call_has_its_code() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    rpc_tracing.set_span_recording(True)

    async def main() -> grpc.StatusCode:
        server = grpc.aio.server(interceptors=[TracingInterceptor(provider)])
        server.add_generic_rpc_handlers((_handlers(None),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with TracedChannel(
                grpc.aio.insecure_channel(f"127.0.0.1:{port}"), provider
            ) as channel:
                call = channel.unary_unary(
                    f"/{SERVICE}/Back",
                    request_serializer=_identity,
                    response_deserializer=_identity,
                )
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call(b"fail", timeout=10)
                # the CLIENT span ends from the call's done callback: wait until it has
                deadline = time.monotonic() + 60
                while not any(s.kind.name == "CLIENT" for s in exporter.get_finished_spans()):
                    assert time.monotonic() < deadline, "the CLIENT span never ended"
                    await asyncio.sleep(0.01)
                return caught.value.code()
        finally:
            await server.stop(5)

    try:
        code = asyncio.run(main())
    finally:
        rpc_tracing.set_span_recording(None)
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    spans = {s.kind.name: s for s in exporter.get_finished_spans()}
    expected = grpc.StatusCode.FAILED_PRECONDITION.value[0]
    for kind in ("SERVER", "CLIENT"):
        attributes = spans[kind].attributes
        assert attributes is not None
        assert attributes["rpc.grpc.status_code"] == expected
        assert spans[kind].status.status_code.name == "ERROR"


@pytest.mark.parametrize(
    "header",
    [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        " \t00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 \t",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "garbage",
        "",
    ],
)
def test_the_traceparent_fast_path_reads_what_the_propagator_reads(header: str) -> None:
    """Under the default propagators a lone traceparent is parsed directly: same result
    as `propagate.extract`, valid or not."""
    assert rpc_tracing._w3c_propagation()
    expected = trace.get_current_span(propagate.extract({"traceparent": header}))
    got = trace.get_current_span(rpc_tracing._from_traceparent(header))
    assert got.get_span_context() == expected.get_span_context()


class _Metadata:
    """The part of a servicer context the span code reads."""

    def __init__(self, *metadata: tuple[str, str]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


@pytest.mark.parametrize(
    "header",
    [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "garbage",
    ],
)
def test_the_unrecorded_child_fast_path_continues_what_the_generic_path_does(
    header: str,
) -> None:
    """A lone valid traceparent gives the child the generic path would (same trace id,
    flags and state, a new span id); anything else is left to the generic path."""
    context: Any = _Metadata(("authorization", "Bearer x"), ("traceparent", header))
    fast = rpc_tracing._unrecorded_child_of_caller(context)
    generic = rpc_tracing._unrecorded_child(rpc_tracing._remote_context(context))
    caller = trace.get_current_span(propagate.extract({"traceparent": header}))
    if not caller.get_span_context().is_valid:
        assert fast is None
        return
    assert fast is not None
    got, expected = fast.get_span_context(), generic.get_span_context()
    assert (got.trace_id, got.trace_flags, got.trace_state, got.is_remote) == (
        expected.trace_id,
        expected.trace_flags,
        expected.trace_state,
        expected.is_remote,
    )
    assert got.span_id not in (0, caller.get_span_context().span_id)
    assert not fast.is_recording()


def test_the_unrecorded_child_fast_path_leaves_baggage_to_the_propagators() -> None:
    traceparent = ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    for metadata in ((traceparent, ("baggage", "k=v")), (traceparent, traceparent)):
        context: Any = _Metadata(*metadata)
        assert rpc_tracing._unrecorded_child_of_caller(context) is None


def test_the_unrecorded_child_of_a_caller_without_a_trace_starts_one() -> None:
    context: Any = _Metadata(("authorization", "Bearer x"))
    first = rpc_tracing._unrecorded_child_of_caller(context)
    second = rpc_tracing._unrecorded_child_of_caller(context)
    assert first is not None and second is not None
    assert first.get_span_context().is_valid
    assert first.get_span_context().trace_id != second.get_span_context().trace_id
    assert first.get_span_context().trace_flags.sampled
    assert not first.is_recording()


def test_the_injected_context_is_what_the_propagator_injects() -> None:
    """The fast traceparent (and tracestate) equals `propagate.inject`'s; with baggage the
    propagators themselves write the carrier."""
    state = trace.TraceState([("vendor", "value")])
    for trace_state in (trace.TraceState(), state):
        span_context = trace.SpanContext(
            0x4BF92F3577B34DA6A3CE929D0E0E4736,
            0x00F067AA0BA902B7,
            is_remote=False,
            trace_flags=trace.TraceFlags(1),
            trace_state=trace_state,
        )
        ctx = trace.set_span_in_context(trace.NonRecordingSpan(span_context))
        for with_baggage in (False, True):
            if with_baggage:
                ctx = baggage.set_baggage("user", "42", ctx)
            token = otel_context.attach(ctx)
            try:
                expected: dict[str, str] = {}
                propagate.inject(expected)
                assert rpc_tracing._injected() == expected
            finally:
                otel_context.detach(token)
    assert rpc_tracing._injected() == {}  # no span: nothing to send
