"""Executor domain errors, each with a canonical code and a catalogue reason.

The executor also raises shared ones from `tensorwasm_common.errors` (InvalidWasmError,
ExportNotFoundError, InitExportInvalidError, InstanceNotFoundError, ...).
"""

from __future__ import annotations

from tensorwasm_common.errors import (
    Code,
    InvalidArgumentError,
    NotFoundError,
    Reason,
    ResourceExhaustedError,
    ServiceError,
)

__all__ = [
    "ArgumentMismatchError",
    "DirectoryNotGrantedError",
    "ExecutorSaturatedError",
    "FuelUnsupportedError",
    "ImageFormatError",
    "InitFailedError",
    "InstanceBusyError",
    "InstanceCapacityExhaustedError",
    "InstanceStateUnsupportedError",
    "InvalidValueError",
    "PreinitStateUnsupportedError",
    "ResidentGoneError",
    "TenantCapacityExhaustedError",
    "UnsatisfiedImportError",
    "UnsupportedValueTypeError",
]


class ArgumentMismatchError(InvalidArgumentError):
    """The arguments do not match the export's signature (metadata: export, expected, got)."""

    reason = Reason.ARGUMENT_MISMATCH


class InvalidValueError(InvalidArgumentError):
    """A value's payload is out of range or of the wrong shape for its type (metadata: type)."""

    reason = Reason.INVALID_VALUE


class UnsupportedValueTypeError(InvalidArgumentError):
    """A reference (or other non-numeric) type crosses the call boundary (metadata: type)."""

    reason = Reason.UNSUPPORTED_VALUE_TYPE


class UnsatisfiedImportError(ServiceError):
    """The module imports something the sandbox does not provide (metadata: module, name)."""

    code = Code.FAILED_PRECONDITION
    reason = Reason.UNSATISFIED_IMPORT


class InitFailedError(ServiceError):
    """The start function or the init export failed while building an image
    (metadata: stage "start" | "init", export, trap_code)."""

    code = Code.FAILED_PRECONDITION
    reason = Reason.INIT_FAILED


class PreinitStateUnsupportedError(ServiceError):
    """Init changed state an image cannot restore (metadata: kind, index)."""

    code = Code.FAILED_PRECONDITION
    reason = Reason.PREINIT_STATE_UNSUPPORTED


class InstanceStateUnsupportedError(ServiceError):
    """A live instance holds state a snapshot cannot carry (metadata: kind, index)."""

    code = Code.FAILED_PRECONDITION
    reason = Reason.INSTANCE_STATE_UNSUPPORTED


class ImageFormatError(ServiceError):
    """A pre-initialised instance image is malformed or of an unknown format version."""

    code = Code.DATA_LOSS
    reason = Reason.INSTANCE_IMAGE_INVALID


class ExecutorSaturatedError(ResourceExhaustedError):
    """Every slot of this executor is taken; retry after the delay (or on another replica)."""

    reason = Reason.EXECUTOR_SATURATED


class TenantCapacityExhaustedError(ResourceExhaustedError):
    """The tenant already has its maximum number of live instances on this executor."""

    reason = Reason.TENANT_CAPACITY_EXHAUSTED


class InstanceCapacityExhaustedError(ResourceExhaustedError):
    """The executor holds its maximum number of live instances."""

    reason = Reason.INSTANCE_CAPACITY_EXHAUSTED


class ResidentGoneError(NotFoundError):
    """The resident instance was terminated."""

    reason = Reason.INSTANCE_NOT_FOUND


class InstanceBusyError(ServiceError):
    """A resident instance stayed busy with other calls for this call's whole deadline."""

    code = Code.ABORTED
    reason = Reason.INSTANCE_BUSY


class DirectoryNotGrantedError(InvalidArgumentError):
    """The read-only directory is not a directory under the tenant's granted subtree."""

    reason = Reason.DIRECTORY_NOT_GRANTED


class FuelUnsupportedError(InvalidArgumentError):
    """Fuel was requested from an executor that does not meter fuel."""

    reason = Reason.FUEL_UNSUPPORTED
