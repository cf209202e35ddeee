"""The gateway's errors, each with its status code and ErrorInfo reason."""

from __future__ import annotations

from tensorwasm_common.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
)


class FunctionNotFoundError(NotFoundError):
    """No function of that name exists for the tenant."""

    reason = "FUNCTION_NOT_FOUND"


class FunctionAlreadyExistsError(AlreadyExistsError):
    """The tenant already has a function of that name."""

    reason = "FUNCTION_ALREADY_EXISTS"


class InvalidNameError(InvalidArgumentError):
    """A resource name or id does not follow its pattern."""

    reason = "INVALID_NAME"


class InvalidWasmError(InvalidArgumentError):
    """The module bytes are not WebAssembly."""

    reason = "INVALID_WASM"


class ModuleTooLargeError(InvalidArgumentError):
    """The module is larger than the gateway accepts."""

    reason = "TOO_LARGE"


class ExportNotFoundError(InvalidArgumentError):
    """The function has no export of that name."""

    reason = "EXPORT_NOT_FOUND"


class ExportRequiredError(InvalidArgumentError):
    """No export was named and none could be chosen."""

    reason = "EXPORT_REQUIRED"


class InvalidPageTokenError(InvalidArgumentError):
    """The page token is malformed."""

    reason = "INVALID_PAGE_TOKEN"


class InstanceNotFoundError(NotFoundError):
    """No live instance of that name exists for the tenant (never created, deleted, expired)."""

    reason = "INSTANCE_NOT_FOUND"


class InvocationNotFoundError(NotFoundError):
    """No invocation of that id exists for the tenant (or it is past its retention)."""

    reason = "INVOCATION_NOT_FOUND"


class AsyncCapacityExhaustedError(ResourceExhaustedError):
    """The gateway holds its maximum number of unfinished async invocations."""

    reason = "ASYNC_CAPACITY_EXHAUSTED"


class InitExportInvalidError(InvalidArgumentError):
    """The init export is not an exported function `() -> ()` (metadata: export)."""

    reason = "INIT_EXPORT_INVALID"
