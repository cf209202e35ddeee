"""The executor's call log: one JSON line per call received, with the caller's request id.

On when `TENSORWASM_EXECUTOR_CALL_LOG=true`. The line is written when the call arrives,
before it is admitted or run, from the call's metadata alone (the handler is not wrapped,
so the log costs one metadata scan and one log record per call). A call the gateway
forwarded carries the gateway's `x-request-id` (a call carried on a `Calls` stream, its
frame's `request_id`: `call_stream` logs it the same way), so the executors' logs, taken together,
show each request id once per time an executor received it: the evidence that the
gateway never sent a call twice. Its fields: `message` "call received", `method` (the
RPC's name), `request_id` ("" when the caller sent none).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import grpc
from tensorwasm_common.channels import REQUEST_ID_KEY
from tensorwasm_common.handlers import Continuation, RequestT, ResponseT

LOGGED_METHODS = frozenset(
    {
        "/tensorwasm.executor.v1.ExecutorService/Invoke",
        "/tensorwasm.executor.v1.ExecutorService/InvokeStream",
        "/tensorwasm.executor.v1.ExecutorService/CreateInstance",
        "/tensorwasm.executor.v1.ExecutorService/CallInstance",
    }
)
_log = logging.getLogger("tensorwasm_executor.calls")


def request_id_of(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The first `x-request-id` of the metadata (truncated to 128 characters), or ""."""
    for key, value in metadata or ():
        if key == REQUEST_ID_KEY:
            return str(value)[:128]
    return ""


def log_call(method: str, request_id: str) -> None:
    """Writes the line of one call received (`method`: the RPC's full name)."""
    _log.info(
        "call received",
        extra={"method": method.rpartition("/")[2], "request_id": request_id[:128]},
    )


class CallLogInterceptor(grpc.aio.ServerInterceptor):
    """Logs one line per invoking call received (see the module docstring)."""

    async def intercept_service(
        self,
        continuation: Continuation[RequestT, ResponseT],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[RequestT, ResponseT] | None:
        method: str = handler_call_details.method
        if method in LOGGED_METHODS:
            log_call(method, request_id_of(handler_call_details.invocation_metadata))
        return await continuation(handler_call_details)
