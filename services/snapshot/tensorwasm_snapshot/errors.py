"""Errors of the snapshot blob store, each a `ServiceError` with a stable reason."""

from __future__ import annotations

from tensorwasm_common.errors import (
    DataLossError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)

__all__ = [
    "BlobIntegrityError",
    "BlobNotFoundError",
    "DigestMismatchError",
    "InvalidDigestError",
    "InvalidNameError",
    "InvalidPageTokenError",
    "TenantQuotaExceededError",
    "TooLargeError",
]

_MAX_ECHO_CHARS = 80


class BlobNotFoundError(NotFoundError):
    """No blob is stored under the digest."""

    reason = "BLOB_NOT_FOUND"

    def __init__(self, digest: str) -> None:
        """Builds the error.

        Args:
            digest: The digest that was looked up.
        """
        super().__init__(f"blob {digest} not found", metadata={"digest": digest})


class BlobIntegrityError(DataLossError):
    """A stored blob failed verification (header, zstd frame, size or digest); never served."""

    reason = "BLOB_INTEGRITY"

    def __init__(self, digest: str, detail: str) -> None:
        """Builds the error.

        Args:
            digest: The digest of the damaged blob.
            detail: What failed, for the message (not part of the stable contract).
        """
        super().__init__(
            f"blob {digest} failed verification: {detail}", metadata={"digest": digest}
        )


class DigestMismatchError(InvalidArgumentError):
    """The uploaded bytes do not match the digest or size the client announced."""

    reason = "DIGEST_MISMATCH"

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


class TooLargeError(InvalidArgumentError):
    """A blob is larger than the store's limit or than the size the client announced."""

    reason = "TOO_LARGE"

    def __init__(self, limit_bytes: int) -> None:
        """Builds the error.

        Args:
            limit_bytes: The limit that was exceeded.
        """
        super().__init__(
            f"blob exceeds the limit of {limit_bytes} bytes",
            metadata={"limit_bytes": str(limit_bytes)},
        )


class InvalidDigestError(InvalidArgumentError):
    """A digest is not 64 lowercase hex digits (BLAKE3-256)."""

    reason = "INVALID_DIGEST"

    def __init__(self, digest: object) -> None:
        """Builds the error.

        Args:
            digest: The rejected value; echoed back shortened in the metadata.
        """
        shown = repr(digest)[:_MAX_ECHO_CHARS]
        super().__init__(
            f"invalid digest {shown}: want 64 lowercase hex digits (BLAKE3)",
            metadata={"digest": shown},
        )


class InvalidNameError(InvalidArgumentError):
    """A tenant id or reference name does not follow its pattern."""

    reason = "INVALID_NAME"

    def __init__(self, field: str, value: str, pattern: str) -> None:
        """Builds the error.

        Args:
            field: `tenant` or `ref_name`.
            value: The rejected value; echoed back shortened in the metadata.
            pattern: The pattern it had to match, for the message.
        """
        super().__init__(
            f"{field} must match {pattern}",
            metadata={"field": field, field: value[:_MAX_ECHO_CHARS]},
        )


class TenantQuotaExceededError(ResourceExhaustedError):
    """Referencing a blob would take the tenant past its byte quota; nothing was referenced."""

    reason = "TENANT_QUOTA_EXCEEDED"

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


class InvalidPageTokenError(InvalidArgumentError):
    """A page token is malformed, or was issued for other filters."""

    reason = "INVALID_PAGE_TOKEN"

    def __init__(self) -> None:
        """Builds the error."""
        super().__init__(
            "page_token is malformed or belongs to other filters", metadata={"field": "page_token"}
        )
