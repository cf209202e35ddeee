"""Unary calls carried as frames of one long-lived stream (the gateway → executor hop).

A unary RPC costs each side a whole call: a new HTTP/2 stream, headers both ways, the
server's call object, handler task and interceptor dispatch. On the gateway's hop to an
executor that was about a third of the relay's time, so the gateway sends its short calls
as frames of one `Calls` stream per executor instead, a message each way per call.

Each call keeps the unary RPC's behaviour: on the server, `FrameContext` stands in for
grpc's ServicerContext, so the hop interceptor's wrapper (span, deadline, errors, metrics)
runs unchanged around the unary handler (`HopInterceptor.frame_behavior`), and `status_of`
reads the status it ended with. On the client, `frame_error` raises that status as the
`AioRpcError` grpc would have raised for the unary call, so the caller handles both alike.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NoReturn

import grpc
from google.rpc import status_pb2
from grpc.aio import AbortError

from tensorwasm_common.status import STATUS_DETAILS_KEY

_GRPC_CODES = {member.value[0]: member for member in grpc.StatusCode}
# Metadata of a Calls stream, from its client: the largest message it receives, so that an
# answer over it fails its own call instead of ending the stream with all its calls.
MAX_ANSWER_KEY = "x-tensorwasm-max-answer-bytes"


class FrameContext:
    """What a unary handler and the hop interceptor use of grpc's ServicerContext, for
    one call carried in a frame: its metadata (trace context, request id), its deadline
    and the status it ends with."""

    __slots__ = ("_code", "_deadline", "_details", "_metadata", "_trailing")

    def __init__(self, metadata: Sequence[tuple[str, str]], deadline: float | None) -> None:
        self._metadata = tuple(metadata)
        self._deadline = deadline  # time.monotonic() value, or None
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None
        self._trailing: tuple[tuple[str, Any], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(self._deadline - time.monotonic(), 0.0)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str | None:
        return self._details

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def trailing_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._trailing

    def set_trailing_metadata(self, trailing_metadata: Sequence[tuple[str, Any]]) -> None:
        self._trailing = tuple(trailing_metadata)

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, Any]] = (),
    ) -> NoReturn:
        """Ends the call with this status, as grpc's `abort` does."""
        self._code, self._details = code, details
        self._trailing = tuple(trailing_metadata)
        raise AbortError(f"aborted with {code}")


def status_of(context: FrameContext) -> status_pb2.Status | None:
    """None when the call ended OK; else the status it ended with: the rich status the
    error handling put in the trailer, or its bare code and details."""
    code = context.code()
    if code is None or code == grpc.StatusCode.OK:
        return None
    for key, value in context.trailing_metadata():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            return status_pb2.Status.FromString(value)
    return status_pb2.Status(code=code.value[0], message=context.details() or "")


def frame_error(status: status_pb2.Status) -> grpc.aio.AioRpcError:
    """The error grpc raises for a unary call that ended with `status` (its rich status in
    the trailer, where `grpc_status` reads it)."""
    return grpc.aio.AioRpcError(
        _GRPC_CODES.get(status.code, grpc.StatusCode.UNKNOWN),
        grpc.aio.Metadata(),
        grpc.aio.Metadata((STATUS_DETAILS_KEY, status.SerializeToString())),
        details=status.message,
    )


def local_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    """An error with no rich status, as grpc raises for a transport failure."""
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)
