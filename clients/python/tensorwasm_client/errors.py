"""Typed errors of the gateway: one class per status family, decoded from the rich status.

Every failed call raises a `TensorWasmError` subclass chosen by its gRPC status code. Each
carries what the gateway put in the `google.rpc.Status` details (`grpc-status-details-bin`):
the `ErrorInfo` reason (a name of the `ErrorReason` catalogue, e.g. `FUNCTION_NOT_FOUND`),
its domain and metadata, and the `RetryInfo` delay when the gateway said when to come back.

    try:
        client.get_function("missing")
    except NotFoundError as exc:
        print(exc.reason, exc.metadata)      # FUNCTION_NOT_FOUND {'function': ...}
    except RateLimitedError as exc:
        time.sleep(exc.retry_after)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"
# What gRPC says when no transport was ever picked for a call: no byte of it was sent.
NOT_SENT_DETAILS = "failed to connect to all addresses"
REQUEST_ID_KEY = "x-request-id"


class TensorWasmError(Exception):
    """A failed call to the gateway.

    Attributes:
        code: the gRPC status code's name (`NOT_FOUND`, `RESOURCE_EXHAUSTED`, ...).
        reason: the ErrorInfo reason; the code's name when the status carried none.
        message: the status message (for people; match on `reason`, never on this).
        metadata: the ErrorInfo metadata: the names, sizes and digests the error is about.
        domain: the ErrorInfo domain, `<service>.tensorwasm.dev` ("" when none).
        retry_after: seconds to wait before a retry is worth making (RetryInfo), or None.
        request_id: the call's `x-request-id` as the gateway returned it ("" when the
            gateway never saw the call, e.g. it could not be reached).
        not_sent: gRPC reports that no byte of the call left this process (it could not
            connect): the gateway cannot have acted on it.
    """

    def __init__(
        self,
        code: str,
        reason: str,
        message: str,
        metadata: dict[str, str] | None = None,
        *,
        domain: str = "",
        retry_after: float | None = None,
        request_id: str = "",
        not_sent: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})
        self.domain = domain
        self.retry_after = retry_after
        self.request_id = request_id
        self.not_sent = not_sent

    @property
    def retry_after_seconds(self) -> float | None:
        """`retry_after`, under the name the services' errors use."""
        return self.retry_after

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}, {self.reason}, {self.message!r})"


class InvalidArgumentError(TensorWasmError):
    """A request field or argument is malformed (INVALID_ARGUMENT, OUT_OF_RANGE)."""


class FailedPreconditionError(TensorWasmError):
    """The system is not in a state the call needs (FAILED_PRECONDITION)."""


class NotFoundError(TensorWasmError):
    """The named function, instance or invocation does not exist for the tenant."""


class AlreadyExistsError(TensorWasmError):
    """The resource to create exists already."""


class UnauthenticatedError(TensorWasmError):
    """The bearer token is missing, malformed or unknown (UNAUTHENTICATED)."""


class PermissionDeniedError(TensorWasmError):
    """The token's scope does not cover the tenant or the operation (PERMISSION_DENIED)."""


class ResourceExhaustedError(TensorWasmError):
    """A limit was hit (RESOURCE_EXHAUSTED) and the gateway gave no time to come back."""


class RateLimitedError(ResourceExhaustedError):
    """A rate limit, concurrency cap or throttle refused the call before it started;
    `retry_after` seconds from now it is worth trying again."""

    retry_after: float


class UnavailableError(TensorWasmError):
    """The gateway, or what it depends on, could not be reached (UNAVAILABLE)."""


class DeadlineExceededError(TensorWasmError):
    """The call's deadline passed before it finished (DEADLINE_EXCEEDED)."""


class CallCancelledError(TensorWasmError):
    """The call was cancelled (CANCELLED)."""


class AbortedError(TensorWasmError):
    """The call was aborted, e.g. by a concurrent change (ABORTED)."""


class UnimplementedError(TensorWasmError):
    """The gateway does not offer this operation (UNIMPLEMENTED)."""


class InternalError(TensorWasmError):
    """The gateway failed unexpectedly (INTERNAL, UNKNOWN, DATA_LOSS)."""


_FAMILIES: dict[grpc.StatusCode, type[TensorWasmError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CallCancelledError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
}


def error_class(code: grpc.StatusCode, retry_after: float | None) -> type[TensorWasmError]:
    """The class for a status code; RESOURCE_EXHAUSTED with a retry delay is RateLimitedError."""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is not None:
        return RateLimitedError
    return _FAMILIES.get(code, InternalError)


def from_rpc_error(exc: grpc.RpcError) -> TensorWasmError:
    """The typed error of a failed call (blocking or asyncio), decoded from its trailers."""
    code = _call_attr(exc, "code") or grpc.StatusCode.UNKNOWN
    message = _call_attr(exc, "details") or ""
    trailers = list(_call_attr(exc, "trailing_metadata") or ())
    status = _rich_status(trailers, code)
    reason, domain, metadata = code.name, "", {}
    retry_after: float | None = None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Unpack(retry):
            retry_after = retry.retry_delay.ToNanoseconds() / 1e9
    cls = error_class(code, retry_after)
    return cls(
        code.name,
        reason,
        message,
        metadata,
        domain=domain,
        retry_after=retry_after,
        request_id=_first(trailers, REQUEST_ID_KEY),
        not_sent=code == grpc.StatusCode.UNAVAILABLE and message.startswith(NOT_SENT_DETAILS),
    )


def _call_attr(exc: grpc.RpcError, name: str) -> Any:
    method = getattr(exc, name, None)
    return method() if callable(method) else None


def _rich_status(trailers: Iterable[tuple[str, Any]], code: grpc.StatusCode) -> status_pb2.Status:
    """The `google.rpc.Status` of the trailers; empty when absent, malformed or when its
    code contradicts the call's (as grpcio-status refuses it)."""
    for key, value in trailers:
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except DecodeError:
                return status_pb2.Status()
            return status if status.code == code.value[0] else status_pb2.Status()
    return status_pb2.Status()


def _first(trailers: Iterable[tuple[str, Any]], key: str) -> str:
    for name, value in trailers:
        if name == key and isinstance(value, str):
            return value
    return ""
