"""The error model: exceptions that carry a canonical status code and an ErrorInfo reason.

Domain modules raise these without importing grpc; the server interceptor in
`tensorwasm_common.interceptors` turns them into `google.rpc.Status` with one `ErrorInfo`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


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
    """A failed request: a status code, a stable UPPER_SNAKE reason and metadata.

    Subclasses fix `code` and `reason`; `metadata` carries the dynamic values
    (digests, names, sizes) so that messages stay free to change.
    """

    code: Code = Code.INTERNAL
    reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        retry_after_seconds: float | None = None,
        code: Code | None = None,
        reason: str | None = None,
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


class InvalidArgumentError(ServiceError):
    """A request field is missing or malformed."""

    code = Code.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class NotFoundError(ServiceError):
    """The named resource does not exist."""

    code = Code.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExistsError(ServiceError):
    """The resource to create exists already."""

    code = Code.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class ResourceExhaustedError(ServiceError):
    """A limit or quota was hit; `retry_after_seconds` says when to come back."""

    code = Code.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class DataLossError(ServiceError):
    """Stored bytes failed verification; they are never served."""

    code = Code.DATA_LOSS
    reason = "DATA_LOSS"


class UnavailableError(ServiceError):
    """A dependency did not answer; the request may be retried."""

    code = Code.UNAVAILABLE
    reason = "UPSTREAM_UNAVAILABLE"


class InternalError(ServiceError):
    """An unexpected failure; details go to the logs, not to the caller."""

    code = Code.INTERNAL
    reason = "INTERNAL"
