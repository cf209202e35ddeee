"""ErrorInterceptor on a real grpc.aio server: statuses, rich details and request metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import REGISTRY
from tensorwasm_common.errors import (
    Code,
    DataLossError,
    InvalidArgumentError,
    NotFoundError,
    Reason,
    ResourceExhaustedError,
)
from tensorwasm_common.interceptors import ErrorInterceptor
from tensorwasm_common.status import STATUS_DETAILS_KEY, error_from_rpc

SERVICE = "test.Svc"
DOMAIN = "test.tensorwasm.dev"


class QuotaError(ResourceExhaustedError):
    reason = Reason.RESOURCE_EXHAUSTED


def _identity(data: bytes) -> bytes:
    return data


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return b"echo:" + request


async def _quota(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise QuotaError(
        "tenant acme is over its quota",
        metadata={"tenant": "acme", "limit": "10"},
        retry_after_seconds=2.5,
    )


async def _not_found(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise NotFoundError("no function f", reason=Reason.FUNCTION_NOT_FOUND, metadata={"id": "f"})


async def _crash(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise RuntimeError("secret detail")


async def _abort(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not yours")
    raise AssertionError("abort returned")


async def _stream(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    yield b"first"
    raise DataLossError("chunk 2 is corrupt", metadata={"chunk": "2"})


async def _stream_ok(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    for part in (b"a", b"b", b"c"):
        yield part


async def _upload(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
    received = [r async for r in requests]
    raise InvalidArgumentError(
        "bad upload", reason=Reason.DIGEST_MISMATCH, metadata={"parts": str(len(received))}
    )


async def _chat(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for request in requests:
        yield b"re:" + request
    raise RuntimeError("secret detail in a bidi stream")


def _handlers() -> grpc.GenericRpcHandler:
    def unary(behavior: Callable[..., Awaitable[bytes]]) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=_identity, response_serializer=_identity
        )

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": unary(_echo),
            "Quota": unary(_quota),
            "NotFound": unary(_not_found),
            "Crash": unary(_crash),
            "Abort": unary(_abort),
            "Stream": grpc.unary_stream_rpc_method_handler(
                _stream, request_deserializer=_identity, response_serializer=_identity
            ),
            "StreamOk": grpc.unary_stream_rpc_method_handler(
                _stream_ok, request_deserializer=_identity, response_serializer=_identity
            ),
            "Upload": grpc.stream_unary_rpc_method_handler(
                _upload, request_deserializer=_identity, response_serializer=_identity
            ),
            "Chat": grpc.stream_stream_rpc_method_handler(
                _chat, request_deserializer=_identity, response_serializer=_identity
            ),
        },
    )


def _serve(scenario: Callable[[grpc.aio.Channel], Awaitable[Any]]) -> Any:
    """Runs `scenario` against a fresh server with the interceptor installed."""

    async def main() -> Any:
        server = grpc.aio.server(interceptors=[ErrorInterceptor("test")])
        server.add_generic_rpc_handlers((_handlers(),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await asyncio.wait_for(scenario(channel), timeout=30)
        finally:
            # A grace period lets handlers finish their bookkeeping after the client has
            # its answer (stop(None) would cancel them mid-way).
            await server.stop(10)

    return asyncio.run(main())


def _unary(channel: grpc.aio.Channel, method: str) -> Any:
    return channel.unary_unary(
        f"/{SERVICE}/{method}", request_serializer=_identity, response_deserializer=_identity
    )


async def _unary_error(channel: grpc.aio.Channel, method: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _unary(channel, method)(b"req", timeout=10)
    return caught.value


def _count(method: str, code: str) -> float:
    value = REGISTRY.get_sample_value(
        "tensorwasm_grpc_server_requests_total",
        {"service": "test", "method": f"/{SERVICE}/{method}", "code": code},
    )
    return value or 0.0


def _rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    values = [v for k, v in error.trailing_metadata() or () if k == STATUS_DETAILS_KEY]
    assert len(values) == 1, f"expected one {STATUS_DETAILS_KEY} trailer, got {len(values)}"
    assert isinstance(values[0], bytes)
    return status_pb2.Status.FromString(values[0])


def _details(
    status: status_pb2.Status,
) -> tuple[list[error_details_pb2.ErrorInfo], list[error_details_pb2.RetryInfo]]:
    infos: list[error_details_pb2.ErrorInfo] = []
    retries: list[error_details_pb2.RetryInfo] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            infos.append(error_details_pb2.ErrorInfo())
            detail.Unpack(infos[-1])
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retries.append(error_details_pb2.RetryInfo())
            detail.Unpack(retries[-1])
        else:
            raise AssertionError(f"unexpected detail {detail.type_url}")
    return infos, retries


def test_success_passes_through_and_counts_ok() -> None:
    before = _count("Echo", "OK")
    reply = _serve(lambda channel: _unary(channel, "Echo")(b"hi", timeout=10))
    assert reply == b"echo:hi"
    assert _count("Echo", "OK") == before + 1


def test_service_error_becomes_rich_status_with_retry_info() -> None:
    before = _count("Quota", "RESOURCE_EXHAUSTED")
    error = _serve(lambda channel: _unary_error(channel, "Quota"))

    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error.details() == "tenant acme is over its quota"
    status = _rich_status(error)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert status.message == "tenant acme is over its quota"
    infos, retries = _details(status)
    assert len(infos) == 1
    assert infos[0].reason == "RESOURCE_EXHAUSTED"
    assert infos[0].domain == DOMAIN
    assert dict(infos[0].metadata) == {"tenant": "acme", "limit": "10"}
    assert len(retries) == 1
    assert retries[0].retry_delay.seconds == 2
    assert retries[0].retry_delay.nanos == 500_000_000

    rebuilt = error_from_rpc(error)
    assert rebuilt.code is Code.RESOURCE_EXHAUSTED
    assert rebuilt.reason == "RESOURCE_EXHAUSTED"
    assert rebuilt.domain == DOMAIN
    assert rebuilt.metadata == {"tenant": "acme", "limit": "10"}
    assert rebuilt.retry_after_seconds == 2.5
    assert rebuilt.message == "tenant acme is over its quota"

    assert _count("Quota", "RESOURCE_EXHAUSTED") == before + 1


def test_service_error_without_retry_has_only_error_info() -> None:
    before = _count("NotFound", "NOT_FOUND")
    error = _serve(lambda channel: _unary_error(channel, "NotFound"))
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert error.details() == "no function f"
    status = _rich_status(error)
    assert len(status.details) == 1
    infos, retries = _details(status)
    assert retries == []
    # FUNCTION_NOT_FOUND is the gateway's: it carries the gateway's domain wherever raised.
    assert (infos[0].reason, infos[0].domain) == ("FUNCTION_NOT_FOUND", "gateway.tensorwasm.dev")
    assert dict(infos[0].metadata) == {"id": "f"}
    rebuilt = error_from_rpc(error)
    assert (rebuilt.code, rebuilt.reason, rebuilt.metadata) == (
        Code.NOT_FOUND,
        "FUNCTION_NOT_FOUND",
        {"id": "f"},
    )
    assert rebuilt.retry_after_seconds is None
    assert _count("NotFound", "NOT_FOUND") == before + 1


def test_unexpected_exception_is_internal_and_does_not_leak(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = _count("Crash", "INTERNAL")
    error = _serve(lambda channel: _unary_error(channel, "Crash"))

    assert error.code() is grpc.StatusCode.INTERNAL
    assert "secret detail" not in (error.details() or "")
    status = _rich_status(error)
    assert "secret detail" not in status.message
    assert "secret detail" not in status.SerializeToString().decode("latin-1")
    infos, retries = _details(status)
    assert len(infos) == 1
    assert infos[0].reason == "INTERNAL"
    assert infos[0].domain == DOMAIN
    assert dict(infos[0].metadata) == {}
    assert retries == []
    rebuilt = error_from_rpc(error)
    assert (rebuilt.code, rebuilt.reason) == (Code.INTERNAL, "INTERNAL")

    assert _count("Crash", "INTERNAL") == before + 1
    # The detail goes to the server's log instead.
    logged = [r for r in caplog.records if r.name == "tensorwasm_common.interceptors"]
    assert any(r.exc_info and "secret detail" in str(r.exc_info[1]) for r in logged)


def test_context_abort_keeps_its_code_and_is_counted() -> None:
    before = _count("Abort", "PERMISSION_DENIED")
    error = _serve(lambda channel: _unary_error(channel, "Abort"))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "not yours"
    assert all(k != STATUS_DETAILS_KEY for k, _ in error.trailing_metadata() or ())
    assert _count("Abort", "PERMISSION_DENIED") == before + 1


def test_stream_error_after_first_message() -> None:
    before = _count("Stream", "DATA_LOSS")

    async def scenario(channel: grpc.aio.Channel) -> tuple[list[bytes], grpc.aio.AioRpcError]:
        call = channel.unary_stream(
            f"/{SERVICE}/Stream", request_serializer=_identity, response_deserializer=_identity
        )(b"req", timeout=10)
        received: list[bytes] = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for message in call:
                received.append(message)
        return received, caught.value

    received, error = _serve(scenario)
    assert received == [b"first"]
    assert error.code() is grpc.StatusCode.DATA_LOSS
    assert error.details() == "chunk 2 is corrupt"
    infos, retries = _details(_rich_status(error))
    assert len(infos) == 1
    assert (infos[0].reason, infos[0].domain) == ("DATA_LOSS", DOMAIN)
    assert dict(infos[0].metadata) == {"chunk": "2"}
    assert retries == []
    rebuilt = error_from_rpc(error)
    assert (rebuilt.code, rebuilt.reason, rebuilt.metadata) == (
        Code.DATA_LOSS,
        "DATA_LOSS",
        {"chunk": "2"},
    )
    assert _count("Stream", "DATA_LOSS") == before + 1


def test_successful_stream_counts_ok() -> None:
    before = _count("StreamOk", "OK")

    async def scenario(channel: grpc.aio.Channel) -> list[bytes]:
        call = channel.unary_stream(
            f"/{SERVICE}/StreamOk", request_serializer=_identity, response_deserializer=_identity
        )(b"req", timeout=10)
        return [message async for message in call]

    assert _serve(scenario) == [b"a", b"b", b"c"]
    assert _count("StreamOk", "OK") == before + 1


def test_client_streaming_error() -> None:
    before = _count("Upload", "INVALID_ARGUMENT")

    async def scenario(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
        call = channel.stream_unary(
            f"/{SERVICE}/Upload", request_serializer=_identity, response_deserializer=_identity
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(iter([b"1", b"2", b"3"]), timeout=10)
        return caught.value

    error = _serve(scenario)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "bad upload"
    infos, _ = _details(_rich_status(error))
    assert (infos[0].reason, dict(infos[0].metadata)) == ("DIGEST_MISMATCH", {"parts": "3"})
    assert _count("Upload", "INVALID_ARGUMENT") == before + 1


def test_bidi_streaming_unexpected_error_is_internal() -> None:
    before = _count("Chat", "INTERNAL")

    async def scenario(channel: grpc.aio.Channel) -> tuple[list[bytes], grpc.aio.AioRpcError]:
        call = channel.stream_stream(
            f"/{SERVICE}/Chat", request_serializer=_identity, response_deserializer=_identity
        )(iter([b"x", b"y"]), timeout=10)
        received: list[bytes] = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for message in call:
                received.append(message)
        return received, caught.value

    received, error = _serve(scenario)
    assert received == [b"re:x", b"re:y"]
    assert error.code() is grpc.StatusCode.INTERNAL
    assert "secret detail" not in (error.details() or "")
    infos, _ = _details(_rich_status(error))
    assert infos[0].reason == "INTERNAL"
    assert _count("Chat", "INTERNAL") == before + 1


def test_unknown_method_is_unimplemented_and_not_counted() -> None:
    before = _count("Missing", "UNIMPLEMENTED")
    error = _serve(lambda channel: _unary_error(channel, "Missing"))
    assert error.code() is grpc.StatusCode.UNIMPLEMENTED
    assert _count("Missing", "UNIMPLEMENTED") == before


def test_cancelled_call_is_not_counted_as_ok() -> None:
    before_ok = _count("Hang", "OK")
    before_cancelled = _count("Hang", "CANCELLED")

    async def main() -> None:
        started = asyncio.Event()
        finished = asyncio.Event()

        async def hang(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            started.set()
            try:
                await asyncio.Event().wait()
            finally:
                finished.set()
            return b""

        server = grpc.aio.server(interceptors=[ErrorInterceptor("test")])
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    SERVICE, {"Hang": grpc.unary_unary_rpc_method_handler(hang)}
                ),
            )
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = _unary(channel, "Hang")(b"req")
                await asyncio.wait_for(started.wait(), timeout=30)
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
                await asyncio.wait_for(finished.wait(), timeout=30)
                await asyncio.sleep(0)  # the interceptor's finally runs in the same step
        finally:
            await server.stop(None)

    asyncio.run(main())
    assert _count("Hang", "OK") == before_ok
    assert _count("Hang", "CANCELLED") == before_cancelled + 1
