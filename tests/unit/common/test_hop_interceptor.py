"""HopInterceptor on a real grpc.aio server: one interceptor doing what tracing, errors,
the service token and the service's own layers did as separate interceptors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry import trace
from prometheus_client import REGISTRY
from tensorwasm_common.deadlines import downstream_timeout
from tensorwasm_common.errors import NotFoundError, Reason
from tensorwasm_common.handlers import Behavior, rewrap
from tensorwasm_common.interceptors import HopInterceptor
from tensorwasm_common.service_auth import ServiceTokenInterceptor
from tensorwasm_common.status import error_from_rpc

SERVICE = "test.Hop"
TOKEN = "t" * 40
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def _identity(data: bytes) -> bytes:
    return data


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    span = trace.get_current_span().get_span_context()
    seen = [f"{span.trace_id:032x}", f"{downstream_timeout(1000.0) < 100}"]
    return b"|".join([request, *(s.encode() for s in seen)])


async def _missing(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise NotFoundError("no such thing", reason=Reason.FUNCTION_NOT_FOUND)


async def _stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for part in (b"a", b"b"):
        yield part


class _Recorder:
    """A layer that records the order it ran in, and can refuse a method."""

    def __init__(self, name: str, log: list[str], refuse: str = "") -> None:
        self._name, self._log, self._refuse = name, log, refuse

    def wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        def unary(behavior: Behavior) -> Behavior:
            async def layered(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                self._log.append(self._name)
                if method.endswith(self._refuse) and self._refuse:
                    raise NotFoundError("refused by a layer", reason=Reason.FUNCTION_NOT_FOUND)
                return await behavior(request, context)

            return layered

        def stream(behavior: Behavior) -> Behavior:
            async def layered(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                self._log.append(self._name)
                async for response in behavior(request, context):
                    yield response

            return layered

        return rewrap(handler, unary, stream)


def _serve(hop: HopInterceptor, scenario: Callable[[grpc.aio.Channel], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        server = grpc.aio.server(interceptors=[hop])
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE,
                    {
                        "Echo": grpc.unary_unary_rpc_method_handler(_echo, _identity, _identity),
                        "Missing": grpc.unary_unary_rpc_method_handler(
                            _missing, _identity, _identity
                        ),
                        "Stream": grpc.unary_stream_rpc_method_handler(
                            _stream, _identity, _identity
                        ),
                    },
                ),
            )
        )
        checker = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await checker.set("", health_pb2.HealthCheckResponse.SERVING)
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await asyncio.wait_for(scenario(channel), timeout=30)
        finally:
            await server.stop(10)

    return asyncio.run(main())


def _call(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_unary(f"/{SERVICE}/{method}", _identity, _identity)


def _count(method: str, code: str) -> float:
    labels = {"service": "hop-test", "method": f"/{SERVICE}/{method}", "code": code}
    return REGISTRY.get_sample_value("tensorwasm_grpc_server_requests_total", labels) or 0.0


async def _error(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def test_a_call_continues_the_callers_trace_under_its_deadline_and_is_counted() -> None:
    before = _count("Echo", "OK")
    reply = _serve(
        HopInterceptor("hop-test"),
        lambda channel: _call(channel, "Echo")(
            b"hi", timeout=10, metadata=(("traceparent", TRACEPARENT),)
        ),
    )
    assert reply == f"hi|{TRACE_ID}|True".encode()
    assert _count("Echo", "OK") == before + 1


def test_a_typed_error_becomes_its_rich_status_and_is_counted() -> None:
    before = _count("Missing", "NOT_FOUND")
    error = _serve(
        HopInterceptor("hop-test"),
        lambda channel: _error(_call(channel, "Missing")(b"", timeout=10)),
    )
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert error_from_rpc(error).reason == Reason.FUNCTION_NOT_FOUND
    assert _count("Missing", "NOT_FOUND") == before + 1


def test_the_service_token_is_required_except_on_health() -> None:
    hop = HopInterceptor("hop-test", service_token=ServiceTokenInterceptor(TOKEN))

    async def scenario(channel: grpc.aio.Channel) -> tuple[Any, ...]:
        missing = await _error(_call(channel, "Echo")(b"", timeout=10))
        wrong = await _error(
            _call(channel, "Echo")(
                b"", timeout=10, metadata=(("x-tensorwasm-service-token", "x" * 40),)
            )
        )
        stream = channel.unary_stream(f"/{SERVICE}/Stream", _identity, _identity)
        refused_stream = await _error(_drain(stream(b"", timeout=10)))
        good = await _call(channel, "Echo")(
            b"ok", timeout=10, metadata=(("x-tensorwasm-service-token", TOKEN),)
        )
        probe = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
        return missing, wrong, refused_stream, good, probe.status

    missing, wrong, refused_stream, good, probe = _serve(hop, scenario)
    assert missing.code() is grpc.StatusCode.UNAUTHENTICATED
    assert error_from_rpc(missing).reason == Reason.SERVICE_TOKEN_REQUIRED
    assert error_from_rpc(wrong).reason == Reason.SERVICE_TOKEN_INVALID
    assert error_from_rpc(refused_stream).reason == Reason.SERVICE_TOKEN_REQUIRED
    assert good.startswith(b"ok|")
    assert probe == health_pb2.HealthCheckResponse.SERVING


async def _drain(responses: AsyncIterator[bytes]) -> list[bytes]:
    return [response async for response in responses]


def test_layers_run_outermost_first_inside_the_error_handling() -> None:
    log: list[str] = []
    hop = HopInterceptor(
        "hop-test",
        layers=[_Recorder("outer", log), _Recorder("inner", log, refuse="Echo")],
    )

    async def scenario(channel: grpc.aio.Channel) -> tuple[Any, list[bytes]]:
        refused = await _error(_call(channel, "Echo")(b"", timeout=10))
        stream = channel.unary_stream(f"/{SERVICE}/Stream", _identity, _identity)
        return refused, await _drain(stream(b"", timeout=10))

    refused, parts = _serve(hop, scenario)
    assert error_from_rpc(refused).reason == Reason.FUNCTION_NOT_FOUND  # a rich status
    assert parts == [b"a", b"b"]
    assert log == ["outer", "inner", "outer", "inner"]
