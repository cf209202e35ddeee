"""Re-raising a snapshot store's record errors as their typed classes on the client side."""

from __future__ import annotations

from tensorwasm_common.errors import (
    FingerprintMismatchError,
    Reason,
    ServiceError,
    SnapshotCorruptError,
    SnapshotFunctionMismatchError,
    SnapshotKindMismatchError,
    SnapshotNotFoundError,
    SnapshotSignatureError,
    SnapshotTooLargeError,
    SnapshotTruncatedError,
    UnsupportedSnapshotFormatError,
)

__all__ = ["typed_snapshot_error"]

_BY_REASON: dict[Reason, type[ServiceError]] = {
    cls.reason: cls
    for cls in (
        SnapshotNotFoundError,
        FingerprintMismatchError,
        SnapshotCorruptError,
        SnapshotSignatureError,
        UnsupportedSnapshotFormatError,
        SnapshotFunctionMismatchError,
        SnapshotTruncatedError,
        SnapshotTooLargeError,
        SnapshotKindMismatchError,
    )
}


def typed_snapshot_error(error: ServiceError) -> ServiceError:
    """`error` as its typed snapshot class when its reason is one of these, else unchanged."""
    cls = _BY_REASON.get(error.reason)
    if cls is None or isinstance(error, cls):
        return error
    return cls(error.message, metadata=error.metadata, code=error.code, domain=error.domain)
