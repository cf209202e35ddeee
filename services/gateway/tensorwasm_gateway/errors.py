"""The gateway's errors, each with its status code and catalogue reason.

The gateway also raises shared ones from `tensorwasm_common.errors` (InvalidNameError,
InvalidWasmError, ExportNotFoundError, InvalidPageTokenError, InstanceNotFoundError,
InitExportInvalidError, UnimplementedError, ...).
"""

from __future__ import annotations

from tensorwasm_common.errors import (
    AlreadyExistsError,
    Code,
    InvalidArgumentError,
    NotFoundError,
    Reason,
    ResourceExhaustedError,
    ServiceError,
    UnavailableError,
)


class FunctionNotFoundError(NotFoundError):
    """No function of that name exists for the tenant."""

    reason = Reason.FUNCTION_NOT_FOUND


class FunctionAlreadyExistsError(AlreadyExistsError):
    """The tenant already has a function of that name."""

    reason = Reason.FUNCTION_ALREADY_EXISTS


class ModuleTooLargeError(InvalidArgumentError):
    """The module is larger than the gateway accepts."""

    reason = Reason.TOO_LARGE


class UploadMalformedError(InvalidArgumentError):
    """An UploadFunction stream's messages are out of order, or it declares no digest."""

    reason = Reason.UPLOAD_MALFORMED


class UploadIncompleteError(InvalidArgumentError):
    """An UploadFunction stream ended before its declared size arrived."""

    reason = Reason.UPLOAD_INCOMPLETE


class UploadDigestMismatchError(InvalidArgumentError):
    """The uploaded bytes' BLAKE3 digest is not the one the upload declared."""

    reason = Reason.UPLOAD_DIGEST_MISMATCH


class ExportRequiredError(InvalidArgumentError):
    """No export was named and none could be chosen."""

    reason = Reason.EXPORT_REQUIRED


class InvocationNotFoundError(NotFoundError):
    """No invocation of that id exists for the tenant (or it is past its retention)."""

    reason = Reason.INVOCATION_NOT_FOUND


class AsyncCapacityExhaustedError(ResourceExhaustedError):
    """The gateway holds its maximum number of unfinished async invocations."""

    reason = Reason.ASYNC_CAPACITY_EXHAUSTED


class InvocationInterruptedError(ServiceError):
    """The gateway stopped under an async invocation (recorded as its error, never raised
    to a caller): it was failed, not re-run."""

    code = Code.ABORTED
    reason = Reason.INVOCATION_INTERRUPTED


class UnauthenticatedError(ServiceError):
    """The call carries no valid bearer token."""

    code = Code.UNAUTHENTICATED
    reason = Reason.UNAUTHENTICATED


class TenantScopeDeniedError(ServiceError):
    """The token is not scoped to the tenant the call names."""

    code = Code.PERMISSION_DENIED
    reason = Reason.TENANT_SCOPE_DENIED


class AdminScopeRequiredError(ServiceError):
    """A fleet operation was called without the admin role."""

    code = Code.PERMISSION_DENIED
    reason = Reason.ADMIN_SCOPE_REQUIRED


class InvalidMetadataError(ServiceError):
    """A security header is repeated or malformed."""

    code = Code.INVALID_ARGUMENT
    reason = Reason.INVALID_METADATA


class RateLimitedError(ResourceExhaustedError):
    """A request bucket is empty."""

    reason = Reason.RATE_LIMITED


class AuthThrottledError(ResourceExhaustedError):
    """Too many failed authentications from the caller's address; the token is not checked."""

    reason = Reason.AUTH_THROTTLED


class ConcurrencyExhaustedError(ResourceExhaustedError):
    """Every slot of the call's class is taken."""

    reason = Reason.CONCURRENCY_EXHAUSTED


class HolderUnreachableError(UnavailableError):
    """The executor holding an instance could not be connected: the call never left the
    gateway (the replica is down, or left the configuration); metadata: executor."""
