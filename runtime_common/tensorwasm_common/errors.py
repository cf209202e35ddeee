"""The error model: exceptions that carry a canonical status code and an ErrorInfo reason.

Every reason is a `Reason` of the catalogue (`ErrorReason` in errors.proto). Domain modules
raise these without importing grpc; the server interceptor in `tensorwasm_common.interceptors`
turns them into `google.rpc.Status` with one `ErrorInfo`. Each service's own errors live in
its `errors.py`; the ones here are generic or raised by more than one service.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from tensorwasm.common.v1.error_reasons import OWNED_DOMAINS, Reason

__all__ = [
    "AlreadyExistsError",
    "BlobIntegrityError",
    "Code",
    "DataLossError",
    "ExportNotFoundError",
    "FieldTooLargeError",
    "FingerprintMismatchError",
    "InitExportInvalidError",
    "InstanceNotFoundError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidDigestError",
    "InvalidNameError",
    "InvalidPageTokenError",
    "InvalidWasiConfigError",
    "InvalidWasmError",
    "NotFoundError",
    "OffloadDeclarationMalformedError",
    "OffloadOpUnknownError",
    "OffloadSignatureMismatchError",
    "Reason",
    "ResourceExhaustedError",
    "ServiceError",
    "ServiceTokenInvalidError",
    "ServiceTokenRequiredError",
    "SnapshotCorruptError",
    "SnapshotFunctionMismatchError",
    "SnapshotKindMismatchError",
    "SnapshotNotFoundError",
    "SnapshotSignatureError",
    "SnapshotTooLargeError",
    "SnapshotTruncatedError",
    "TooLargeError",
    "UnavailableError",
    "UnimplementedError",
    "UnsupportedSnapshotFormatError",
    "owned_domain",
]

_MAX_ECHO_CHARS = 80


class Code(enum.IntEnum):
    """The canonical gRPC status codes (same numbers as `grpc.StatusCode`)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


class ServiceError(Exception):
    """A failed request: a status code, a catalogue reason and metadata.

    Subclasses fix `code` and `reason`; `metadata` carries the dynamic values
    (digests, names, sizes) so that messages stay free to change. `domain` is set only
    for an error relayed from a peer (its ErrorInfo domain); see `owned_domain`.
    """

    code: Code = Code.INTERNAL
    reason: Reason = Reason.INTERNAL

    def __init__(
        self,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        retry_after_seconds: float | None = None,
        code: Code | None = None,
        reason: Reason | None = None,
        domain: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = dict(metadata or {})
        self.retry_after_seconds = retry_after_seconds
        if code is not None:
            self.code = code
        if reason is not None:
            self.reason = reason
        self.domain = domain

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}, {self.reason}, {self.message!r})"


def owned_domain(reason: Reason) -> str | None:
    """The ErrorInfo domain that `reason` always carries, or None for a generic reason.

    A reason one service owns (errors.proto's `reason_owner`) names that service's domain
    wherever it is raised or relayed; a generic reason (INTERNAL, INVALID_NAME, ...) takes
    the domain of the service where the error arose.
    """
    return OWNED_DOMAINS.get(reason)


class InvalidArgumentError(ServiceError):
    """A request field is missing or malformed."""

    code = Code.INVALID_ARGUMENT
    reason = Reason.INVALID_ARGUMENT


class NotFoundError(ServiceError):
    """The named resource does not exist."""

    code = Code.NOT_FOUND
    reason = Reason.NOT_FOUND


class AlreadyExistsError(ServiceError):
    """The resource to create exists already."""

    code = Code.ALREADY_EXISTS
    reason = Reason.ALREADY_EXISTS


class ResourceExhaustedError(ServiceError):
    """A limit or quota was hit; `retry_after_seconds` says when to come back."""

    code = Code.RESOURCE_EXHAUSTED
    reason = Reason.RESOURCE_EXHAUSTED


class DataLossError(ServiceError):
    """Stored bytes failed verification; they are never served."""

    code = Code.DATA_LOSS
    reason = Reason.DATA_LOSS


class UnavailableError(ServiceError):
    """A dependency did not answer; the request may be retried."""

    code = Code.UNAVAILABLE
    reason = Reason.UPSTREAM_UNAVAILABLE


class InternalError(ServiceError):
    """An unexpected failure; details go to the logs, not to the caller."""

    code = Code.INTERNAL
    reason = Reason.INTERNAL


class UnimplementedError(ServiceError):
    """The operation is not enabled or not implemented by this service."""

    code = Code.UNIMPLEMENTED
    reason = Reason.UNIMPLEMENTED


# Raised by more than one service.


class InvalidWasmError(InvalidArgumentError):
    """The bytes are not a valid WebAssembly module."""

    reason = Reason.INVALID_WASM


class ExportNotFoundError(InvalidArgumentError):
    """The module has no function export of that name (metadata: export)."""

    reason = Reason.EXPORT_NOT_FOUND


class InitExportInvalidError(InvalidArgumentError):
    """The init export is not an exported function `() -> ()` (metadata: export)."""

    reason = Reason.INIT_EXPORT_INVALID


class InstanceNotFoundError(NotFoundError):
    """No live instance of that id exists for the tenant (never created, deleted, expired)."""

    reason = Reason.INSTANCE_NOT_FOUND


class InvalidNameError(InvalidArgumentError):
    """A resource name, id or tenant does not follow its pattern."""

    reason = Reason.INVALID_NAME

    @classmethod
    def of(cls, field: str, value: str, pattern: str) -> InvalidNameError:
        """The error for `value` of `field` not matching `pattern` (echoed back shortened)."""
        return cls(
            f"{field} must match {pattern}",
            metadata={"field": field, field: value[:_MAX_ECHO_CHARS]},
        )


class InvalidPageTokenError(InvalidArgumentError):
    """A page token is malformed, or was issued for other filters."""

    reason = Reason.INVALID_PAGE_TOKEN


class InvalidDigestError(InvalidArgumentError):
    """A digest is not 64 lowercase hex digits (BLAKE3-256 or a PTX digest)."""

    reason = Reason.INVALID_DIGEST

    @classmethod
    def of(cls, digest: object) -> InvalidDigestError:
        """The error for the rejected `digest`, echoed back shortened in the metadata."""
        shown = repr(digest)[:_MAX_ECHO_CHARS]
        return cls(
            f"invalid digest {shown}: want 64 lowercase hex digits (BLAKE3)",
            metadata={"digest": shown},
        )


class TooLargeError(InvalidArgumentError):
    """An object is larger than the configured cap (metadata: limit_bytes)."""

    reason = Reason.TOO_LARGE

    @classmethod
    def of(cls, limit_bytes: int) -> TooLargeError:
        """The error for a blob over `limit_bytes`."""
        return cls(
            f"blob exceeds the limit of {limit_bytes} bytes",
            metadata={"limit_bytes": str(limit_bytes)},
        )


class FieldTooLargeError(InvalidArgumentError):
    """A request field is larger than its cap (metadata: field, limit, unit)."""

    reason = Reason.FIELD_TOO_LARGE

    @classmethod
    def of(cls, field: str, limit: int, unit: str) -> FieldTooLargeError:
        """The error for `field` over its cap of `limit` `unit` (e.g. 1000 arguments)."""
        return cls(
            f"{field} exceeds the limit of {limit} {unit}",
            metadata={"field": field, "limit": str(limit), "unit": unit},
        )


class InvalidWasiConfigError(InvalidArgumentError):
    """argv, env or a directory name is malformed."""

    reason = Reason.INVALID_WASI_CONFIG


class OffloadDeclarationMalformedError(InvalidArgumentError):
    """The offload section is missing, repeated, not JSON, or not of the documented shape
    (metadata: why)."""

    reason = Reason.OFFLOAD_DECLARATION_MALFORMED


class OffloadOpUnknownError(InvalidArgumentError):
    """An export is declared as an op that cannot be offloaded, or with other argument
    names than the op's (metadata: export, op)."""

    reason = Reason.OFFLOAD_OP_UNKNOWN


class OffloadSignatureMismatchError(InvalidArgumentError):
    """A declared export is missing or does not have the op's signature (metadata: export,
    expected)."""

    reason = Reason.OFFLOAD_SIGNATURE_MISMATCH


class ServiceTokenRequiredError(ServiceError):
    """The call to an internal service carries no service token."""

    code = Code.UNAUTHENTICATED
    reason = Reason.SERVICE_TOKEN_REQUIRED


class ServiceTokenInvalidError(ServiceError):
    """The call carries a service token that is not the fleet's (or more than one)."""

    code = Code.UNAUTHENTICATED
    reason = Reason.SERVICE_TOKEN_INVALID


class BlobIntegrityError(DataLossError):
    """A blob failed verification (header, zstd frame, size or digest); never served."""

    reason = Reason.BLOB_INTEGRITY

    def __init__(self, digest: str, detail: str) -> None:
        """Builds the error.

        Args:
            digest: The digest of the damaged blob.
            detail: What failed, for the message (not part of the stable contract).
        """
        super().__init__(
            f"blob {digest} failed verification: {detail}", metadata={"digest": digest}
        )


# Snapshot records: raised by the store, re-raised typed by its clients.


class SnapshotNotFoundError(NotFoundError):
    """No record matches for this tenant (another tenant's record is not found either)."""

    reason = Reason.SNAPSHOT_NOT_FOUND


class FingerprintMismatchError(ServiceError):
    """The snapshot was made by another engine fingerprint; the caller must compile instead."""

    code = Code.FAILED_PRECONDITION
    reason = Reason.ENGINE_FINGERPRINT_MISMATCH

    @classmethod
    def of(cls, expected: str, actual: str) -> FingerprintMismatchError:
        """The error for a record made by `actual` when the caller runs `expected`."""
        return cls(
            f"snapshot was made by engine fingerprint {actual!r}, not {expected!r}",
            metadata={"expected": expected, "actual": actual},
        )


class SnapshotCorruptError(DataLossError):
    """A record file is damaged: truncated, bad magic or header, bad payload digest."""

    reason = Reason.SNAPSHOT_CORRUPT


class SnapshotSignatureError(DataLossError):
    """A record's HMAC-SHA256 signature is missing or wrong; nothing was decompressed."""

    reason = Reason.SNAPSHOT_SIGNATURE_INVALID


class UnsupportedSnapshotFormatError(ServiceError):
    """A record file has a format version (or flag) this code cannot read."""

    code = Code.FAILED_PRECONDITION
    reason = Reason.UNSUPPORTED_SNAPSHOT_FORMAT


class SnapshotFunctionMismatchError(ServiceError):
    """An instance snapshot is of another function (gone, another module, another tenant's,
    or not the one asked for); metadata: function, expected, actual."""

    code = Code.FAILED_PRECONDITION
    reason = Reason.SNAPSHOT_FUNCTION_MISMATCH


class SnapshotTruncatedError(InvalidArgumentError):
    """A snapshot file ended before its declared size (metadata: declared_bytes,
    received_bytes)."""

    reason = Reason.SNAPSHOT_TRUNCATED

    @classmethod
    def of(cls, declared_bytes: int, received_bytes: int) -> SnapshotTruncatedError:
        """The error for a file of `received_bytes` that should have had `declared_bytes`."""
        return cls(
            f"snapshot file is truncated: {received_bytes} of {declared_bytes} bytes",
            metadata={"declared_bytes": str(declared_bytes), "received_bytes": str(received_bytes)},
        )


class SnapshotTooLargeError(InvalidArgumentError):
    """A snapshot is larger than the request's max_restore_bytes (metadata: size_bytes,
    limit_bytes)."""

    reason = Reason.SNAPSHOT_TOO_LARGE

    @classmethod
    def of(cls, size_bytes: int, limit_bytes: int, what: str = "snapshot") -> SnapshotTooLargeError:
        """The error for `what` of `size_bytes` over `limit_bytes`."""
        return cls(
            f"{what} is {size_bytes} bytes, over max_restore_bytes {limit_bytes}",
            metadata={"size_bytes": str(size_bytes), "limit_bytes": str(limit_bytes)},
        )


class SnapshotKindMismatchError(ServiceError):
    """A snapshot record is not of the kind the call needs (metadata: expected, actual)."""

    code = Code.FAILED_PRECONDITION
    reason = Reason.SNAPSHOT_KIND_MISMATCH
