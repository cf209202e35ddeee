"""Conversions between ServiceError and `google.rpc.Status` with one ErrorInfo."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from tensorwasm_common.errors import Code, ServiceError, UnavailableError

STATUS_DETAILS_KEY = "grpc-status-details-bin"


def domain_of(service: str) -> str:
    """The ErrorInfo domain of a service, e.g. `gateway.tensorwasm.dev`."""
    return f"{service}.tensorwasm.dev"


def to_status_proto(error: ServiceError, default_domain: str) -> status_pb2.Status:
    """Builds the rich status for an error: ErrorInfo, plus RetryInfo when it has a delay."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=error.domain or default_domain, metadata=error.metadata
    )
    status = status_pb2.Status(code=int(error.code), message=error.message)
    status.details.add().Pack(info)
    if error.retry_after_seconds is not None:
        total_nanos = round(max(error.retry_after_seconds, 0.0) * 1e9)
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(
                seconds=total_nanos // 1_000_000_000, nanos=total_nanos % 1_000_000_000
            )
        )
        status.details.add().Pack(retry)
    return status


def grpc_code(code: Code) -> grpc.StatusCode:
    """The grpc enum member for a canonical code."""
    return _GRPC_CODES[int(code)]


_GRPC_CODES = {member.value[0]: member for member in grpc.StatusCode}
assert code_pb2.DATA_LOSS == Code.DATA_LOSS  # the numbering is the canonical one


def error_from_rpc(exc: grpc.RpcError) -> ServiceError:
    """Rebuilds the ServiceError a peer raised, keeping its code, reason, domain and metadata."""
    code_member = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    code = Code(code_member.value[0])
    message = exc.details() if hasattr(exc, "details") else str(exc)
    reason, domain, metadata, retry = _details(exc)
    if reason is None:
        reason = "UPSTREAM_UNAVAILABLE" if code == Code.UNAVAILABLE else code.name
    return ServiceError(
        message or code.name,
        code=code,
        reason=reason,
        domain=domain,
        metadata=metadata,
        retry_after_seconds=retry,
    )


def downstream_error(exc: grpc.RpcError, dependency: str) -> ServiceError:
    """Maps a failed call to a dependency: its errors pass through, transport failures
    become UNAVAILABLE naming the dependency."""
    error = error_from_rpc(exc)
    if error.code in (Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.CANCELLED, Code.UNKNOWN):
        return UnavailableError(
            f"{dependency} is unavailable: {error.message}",
            metadata={"dependency": dependency},
            retry_after_seconds=1.0,
        )
    return error


def _details(
    exc: grpc.RpcError,
) -> tuple[str | None, str | None, dict[str, str], float | None]:
    # (key, value) pairs: named tuples from a blocking call, a Metadata from an aio call
    # (the grpc stubs type only the former, and only by attribute).
    trailing: Iterable[Any] | None = (
        exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    )
    for key, value in trailing or ():
        if key != STATUS_DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value)
        reason = domain = None
        metadata: dict[str, str] = {}
        retry = None
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry_info = error_details_pb2.RetryInfo()
                detail.Unpack(retry_info)
                retry = retry_info.retry_delay.ToTimedelta().total_seconds()
        return reason, domain, metadata, retry
    return None, None, {}, None
