"""Typed errors of snapshot records, shared by the store (raising) and clients (re-raising)."""

from __future__ import annotations

from tensorwasm_common.errors import Code, DataLossError, NotFoundError, ServiceError

__all__ = [
    "FingerprintMismatchError",
    "SnapshotCorruptError",
    "SnapshotNotFoundError",
    "SnapshotSignatureError",
    "UnsupportedSnapshotFormatError",
    "typed_snapshot_error",
]


class SnapshotNotFoundError(NotFoundError):
    """No record matches for this tenant (another tenant's record is not found either)."""

    reason = "SNAPSHOT_NOT_FOUND"


class FingerprintMismatchError(ServiceError):
    """The snapshot was made by another engine fingerprint; the caller must compile instead."""

    code = Code.FAILED_PRECONDITION
    reason = "ENGINE_FINGERPRINT_MISMATCH"

    @classmethod
    def of(cls, expected: str, actual: str) -> FingerprintMismatchError:
        """The error for a record made by `actual` when the caller runs `expected`."""
        return cls(
            f"snapshot was made by engine fingerprint {actual!r}, not {expected!r}",
            metadata={"expected": expected, "actual": actual},
        )


class SnapshotCorruptError(DataLossError):
    """A record file is damaged: truncated, bad magic or header, bad payload digest."""

    reason = "SNAPSHOT_CORRUPT"


class SnapshotSignatureError(DataLossError):
    """A record's HMAC-SHA256 signature is missing or wrong; nothing was decompressed."""

    reason = "SNAPSHOT_SIGNATURE_INVALID"


class UnsupportedSnapshotFormatError(ServiceError):
    """A record file has a format version (or flag) this code cannot read."""

    code = Code.FAILED_PRECONDITION
    reason = "UNSUPPORTED_SNAPSHOT_FORMAT"


_BY_REASON: dict[str, type[ServiceError]] = {
    cls.reason: cls
    for cls in (
        SnapshotNotFoundError,
        FingerprintMismatchError,
        SnapshotCorruptError,
        SnapshotSignatureError,
        UnsupportedSnapshotFormatError,
    )
}


def typed_snapshot_error(error: ServiceError) -> ServiceError:
    """`error` as its typed snapshot class when its reason is one of these, else unchanged."""
    cls = _BY_REASON.get(error.reason)
    if cls is None or isinstance(error, cls):
        return error
    return cls(error.message, metadata=error.metadata, code=error.code, domain=error.domain)
