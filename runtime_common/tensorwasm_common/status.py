"""Conversions between ServiceError and `google.rpc.Status` with one ErrorInfo.

grpcio-status (`grpc_status.rpc_status`) carries the rich status in the trailing metadata;
this module only decides what goes into it: one ErrorInfo (the reason, its domain and
metadata) and a RetryInfo when the error says when to come back.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from tensorwasm_common.errors import Code, Reason, ServiceError, UnavailableError, owned_domain

# The trailer that carries the serialized rich status (grpcio-status reads and writes it).
STATUS_DETAILS_KEY = "grpc-status-details-bin"

# A status travels in the trailers twice: its message as grpc-message (percent-encoded, up
# to 3 characters a byte) and the whole status as grpc-status-details-bin (base64). Peers
# refuse trailers beyond 8 KiB by default ("received metadata size exceeds hard limit"),
# so whatever an error echoes back is cut to stay well under that.
MAX_MESSAGE_BYTES = 512
MAX_METADATA_VALUE_BYTES = 256
MAX_METADATA_BYTES = 1024
TRUNCATED = "…"


def domain_of(service: str) -> str:
    """The ErrorInfo domain of a service, e.g. `gateway.tensorwasm.dev`."""
    return f"{service}.tensorwasm.dev"


def error_domain(error: ServiceError, service_domain: str) -> str:
    """The ErrorInfo domain of `error` raised or relayed by the service of `service_domain`.

    A relayed error keeps the domain it came with; otherwise a reason one service owns
    carries that service's domain, and a generic reason the raising service's.
    """
    return error.domain or owned_domain(error.reason) or service_domain


def to_status_proto(error: ServiceError, default_domain: str) -> status_pb2.Status:
    """Builds the rich status for an error: ErrorInfo, plus RetryInfo when it has a delay.

    The message and the metadata are bounded (see `bounded`, `bounded_metadata`).
    """
    info = error_details_pb2.ErrorInfo(
        reason=error.reason,
        domain=error_domain(error, default_domain),
        metadata=bounded_metadata(error.metadata),
    )
    status = status_pb2.Status(
        code=int(error.code), message=bounded(error.message, MAX_MESSAGE_BYTES)
    )
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


def bounded(text: str, limit_bytes: int) -> str:
    """`text` when its UTF-8 form fits `limit_bytes`, else its longest prefix that fits
    with the TRUNCATED marker after it (never a split character)."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit_bytes:
        return text
    room = limit_bytes - len(TRUNCATED.encode())
    return encoded[: max(room, 0)].decode("utf-8", "ignore") + TRUNCATED


def bounded_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """ErrorInfo metadata within MAX_METADATA_BYTES: each value cut to
    MAX_METADATA_VALUE_BYTES; the entries past the budget are left out, and an entry
    `truncated: true` then says so."""
    kept: dict[str, str] = {}
    used = 0
    for key, value in metadata.items():
        entry_key = bounded(key, MAX_METADATA_VALUE_BYTES)
        entry_value = bounded(value, MAX_METADATA_VALUE_BYTES)
        size = len(entry_key.encode()) + len(entry_value.encode())
        if used + size > MAX_METADATA_BYTES:
            kept["truncated"] = "true"
            break
        kept[entry_key] = entry_value
        used += size
    return kept


def to_grpc_status(error: ServiceError, default_domain: str) -> grpc.Status:
    """The grpc status (code, details, rich-status trailer) that ends a call with `error`."""
    status: grpc.Status = rpc_status.to_status(to_status_proto(error, default_domain))
    return status


def grpc_code(code: Code) -> grpc.StatusCode:
    """The grpc enum member for a canonical code."""
    return _GRPC_CODES[int(code)]


_GRPC_CODES = {member.value[0]: member for member in grpc.StatusCode}
assert code_pb2.DATA_LOSS == Code.DATA_LOSS  # the numbering is the canonical one


def rich_status(exc: grpc.RpcError) -> status_pb2.Status | None:
    """The `google.rpc.Status` a failed call carries, or None without a usable one."""
    if not all(hasattr(exc, name) for name in ("code", "details", "trailing_metadata")):
        return None
    try:
        status: status_pb2.Status | None = rpc_status.from_call(exc)
    except ValueError:  # the trailer contradicts the call's own code or message
        return None
    return status


def error_info(status: status_pb2.Status | None) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo among a rich status's details, if any."""
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return None


def error_from_rpc(exc: grpc.RpcError) -> ServiceError:
    """Rebuilds the ServiceError a peer raised, keeping its code, reason, domain and metadata.

    A status without ErrorInfo (a transport failure) gets the reason named after its code;
    a reason this catalogue does not know becomes the one of its code as well.
    """
    code_member = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    code = Code(code_member.value[0])
    message = exc.details() if hasattr(exc, "details") else str(exc)
    status = rich_status(exc)
    info = error_info(status)
    reason = _reason(info.reason if info is not None else None, code)
    return ServiceError(
        message or code.name,
        code=code,
        reason=reason,
        domain=info.domain if info is not None else None,
        metadata=dict(info.metadata) if info is not None else {},
        retry_after_seconds=_retry_after(status),
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


def _reason(sent: str | None, code: Code) -> Reason:
    if sent is not None and sent in Reason.__members__:
        return Reason(sent)
    if code == Code.UNAVAILABLE:
        return Reason.UPSTREAM_UNAVAILABLE
    return Reason.__members__.get(code.name, Reason.UNKNOWN)


def _retry_after(status: Any) -> float | None:
    for detail in status.details if status is not None else ():
        retry = error_details_pb2.RetryInfo()
        if detail.Unpack(retry):
            return float(retry.retry_delay.ToTimedelta().total_seconds())
    return None
