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


class KernelRegistryNotConfiguredError(ServiceError):
    """The gateway has no kernel signing key, so it cannot verify a manifest."""

    code = Code.FAILED_PRECONDITION
    reason = Reason.KERNEL_REGISTRY_NOT_CONFIGURED


class KernelPublishScopeRequiredError(ServiceError):
    """Publishing to the shared catalogue without role=publish or role=admin."""

    code = Code.PERMISSION_DENIED
    reason = Reason.KERNEL_PUBLISH_SCOPE_REQUIRED


class KernelBadSignatureError(ServiceError):
    """The manifest's signature does not verify under the registry's key."""

    code = Code.PERMISSION_DENIED
    reason = Reason.KERNEL_BAD_SIGNATURE


class KernelSigningKeyMismatchError(ServiceError):
    """The manifest names a signing key other than the registry's."""

    code = Code.PERMISSION_DENIED
    reason = Reason.KERNEL_SIGNING_KEY_MISMATCH


class KernelDigestMismatchError(InvalidArgumentError):
    """The PTX text does not hash to the manifest's digest."""

    reason = Reason.KERNEL_DIGEST_MISMATCH


class KernelAlreadyExistsError(AlreadyExistsError):
    """That name@version is already published in the namespace."""

    reason = Reason.KERNEL_ALREADY_EXISTS


class KernelNotFoundError(NotFoundError):
    """No kernel of that name@version is visible to the tenant."""

    reason = Reason.KERNEL_NOT_FOUND


class KernelPtxTooLargeError(InvalidArgumentError):
    """The PTX text is over the registry's cap."""

    reason = Reason.KERNEL_PTX_TOO_LARGE


class KernelNameInvalidError(InvalidArgumentError):
    """The kernel name does not match the registry's name pattern."""

    reason = Reason.KERNEL_NAME_INVALID


class KernelVersionInvalidError(InvalidArgumentError):
    """The version is not SemVer 2.0.0."""

    reason = Reason.KERNEL_VERSION_INVALID


class KernelManifestInvalidError(InvalidArgumentError):
    """A manifest field is malformed (metadata: field)."""

    reason = Reason.KERNEL_MANIFEST_INVALID


class KernelRegistryStorageError(ServiceError):
    """The registry database or the snapshot store failed; nothing was published."""

    code = Code.UNAVAILABLE
    reason = Reason.KERNEL_REGISTRY_STORAGE_ERROR


class HolderUnreachableError(UnavailableError):
    """The executor holding an instance could not be connected: the call never left the
    gateway (the replica is down, or left the configuration); metadata: executor."""
