"""Errors of the snapshot blob store, each a `ServiceError` with a catalogue reason.

The store also raises shared ones from `tensorwasm_common.errors` (BlobIntegrityError,
InvalidDigestError, InvalidNameError, InvalidPageTokenError, TooLargeError).
"""

from __future__ import annotations

from tensorwasm_common.errors import (
    Code,
    InvalidArgumentError,
    NotFoundError,
    Reason,
    ResourceExhaustedError,
    ServiceError,
    UnavailableError,
)

# Seconds a caller is told to wait before retrying while the object store does not answer.
OBJECT_STORE_RETRY_SECONDS = 1.0

__all__ = [
    "BlobNotFoundError",
    "DigestMismatchError",
    "IndexDamagedError",
    "ObjectStoreUnavailableError",
    "TenantQuotaExceededError",
]


class BlobNotFoundError(NotFoundError):
    """No blob is stored under the digest."""

    reason = Reason.BLOB_NOT_FOUND

    def __init__(self, digest: str) -> None:
        """Builds the error.

        Args:
            digest: The digest that was looked up.
        """
        super().__init__(f"blob {digest} not found", metadata={"digest": digest})


class DigestMismatchError(InvalidArgumentError):
    """The uploaded bytes do not match the digest or size the client announced."""

    reason = Reason.DIGEST_MISMATCH

    def __init__(
        self,
        *,
        expected: str | None = None,
        actual: str | None = None,
        expected_size: int | None = None,
        actual_size: int | None = None,
    ) -> None:
        """Builds the error from a digest pair, a size pair, or both.

        Args:
            expected: The digest the client announced.
            actual: The digest of the bytes received.
            expected_size: The size the client announced.
            actual_size: The number of bytes received.
        """
        metadata: dict[str, str] = {}
        parts: list[str] = []
        if expected is not None or actual is not None:
            metadata.update(expected=str(expected), actual=str(actual))
            parts.append(f"digest {actual} != expected {expected}")
        if expected_size is not None or actual_size is not None:
            metadata.update(expected_size=str(expected_size), actual_size=str(actual_size))
            parts.append(f"size {actual_size} != expected {expected_size}")
        super().__init__("content mismatch: " + "; ".join(parts or ["unknown"]), metadata=metadata)


class TenantQuotaExceededError(ResourceExhaustedError):
    """Referencing a blob would take the tenant past its byte quota; nothing was referenced."""

    reason = Reason.TENANT_QUOTA_EXCEEDED

    def __init__(
        self, tenant: str, quota_bytes: int, usage_bytes: int, requested_bytes: int
    ) -> None:
        """Builds the error.

        Args:
            tenant: The tenant charged.
            quota_bytes: Its quota.
            usage_bytes: What it is charged already.
            requested_bytes: What the refused reference (or upload) would add.
        """
        super().__init__(
            f"tenant {tenant!r} would exceed its quota of {quota_bytes} bytes "
            f"({usage_bytes} used, {requested_bytes} more requested)",
            metadata={
                "tenant": tenant,
                "quota_bytes": str(quota_bytes),
                "usage_bytes": str(usage_bytes),
                "requested_bytes": str(requested_bytes),
            },
        )


class IndexDamagedError(ServiceError):
    """The index failed its check when the store opened: garbage is not collected (a wrong
    reference count would delete live objects) until the index is rebuilt."""

    code = Code.FAILED_PRECONDITION
    reason = Reason.INDEX_DAMAGED

    def __init__(self, problem: str) -> None:
        """Builds the error.

        Args:
            problem: The first problem the check found.
        """
        super().__init__(
            f"the store's index is damaged ({problem}); garbage collection is off until "
            "it is rebuilt: stop the store, run `python -m tensorwasm_snapshot rebuild-index "
            "--data-dir DIR`, start it again",
            metadata={"problem": problem[:200]},
        )


class ObjectStoreUnavailableError(UnavailableError):
    """The object store (an S3-compatible bucket) did not answer, or answered a server
    error, mid-run; nothing was installed or referenced, and the call may be retried."""

    reason = Reason.OBJECT_STORE_UNAVAILABLE

    def __init__(self, operation: str, detail: str) -> None:
        """Builds the error.

        Args:
            operation: What the store was doing (put, get, head, delete, list).
            detail: The client's error: kept in `detail` for the store's log, not sent (it
                names the endpoint and keys).
        """
        super().__init__(
            f"the object store is unavailable ({operation}); retry later",
            metadata={"operation": operation},
            retry_after_seconds=OBJECT_STORE_RETRY_SECONDS,
        )
        self.detail = detail
