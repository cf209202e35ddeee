"""Executor domain errors: what the sandbox raises, each with a canonical code and a reason."""

from __future__ import annotations

from tensorwasm_common.errors import Code, InvalidArgumentError, ServiceError

__all__ = [
    "ArgumentMismatchError",
    "ExportNotFoundError",
    "ImageFormatError",
    "InitExportInvalidError",
    "InitFailedError",
    "InvalidValueError",
    "InvalidWasmError",
    "PreinitStateUnsupportedError",
    "UnsatisfiedImportError",
    "UnsupportedValueTypeError",
]


class InvalidWasmError(InvalidArgumentError):
    """The bytes are not a valid WebAssembly module for this engine."""

    reason = "INVALID_WASM"


class ExportNotFoundError(InvalidArgumentError):
    """The module has no function export of that name (metadata: export)."""

    reason = "EXPORT_NOT_FOUND"


class ArgumentMismatchError(InvalidArgumentError):
    """The arguments do not match the export's signature (metadata: export, expected, got)."""

    reason = "ARGUMENT_MISMATCH"


class InvalidValueError(InvalidArgumentError):
    """A value's payload is out of range or of the wrong shape for its type (metadata: type)."""

    reason = "INVALID_VALUE"


class UnsupportedValueTypeError(InvalidArgumentError):
    """A reference (or other non-numeric) type crosses the call boundary (metadata: type)."""

    reason = "UNSUPPORTED_VALUE_TYPE"


class UnsatisfiedImportError(ServiceError):
    """The module imports something the sandbox does not provide (metadata: module, name)."""

    code = Code.FAILED_PRECONDITION
    reason = "UNSATISFIED_IMPORT"


class InitExportInvalidError(InvalidArgumentError):
    """The init export is not an exported function `() -> ()` (metadata: export)."""

    reason = "INIT_EXPORT_INVALID"


class InitFailedError(ServiceError):
    """The start function or the init export failed while building an image
    (metadata: stage "start" | "init", export, trap_code)."""

    code = Code.FAILED_PRECONDITION
    reason = "INIT_FAILED"


class PreinitStateUnsupportedError(ServiceError):
    """Init changed state an image cannot restore (metadata: kind, index)."""

    code = Code.FAILED_PRECONDITION
    reason = "PREINIT_STATE_UNSUPPORTED"


class ImageFormatError(ServiceError):
    """A pre-initialised instance image is malformed or of an unknown format version."""

    code = Code.DATA_LOSS
    reason = "INSTANCE_IMAGE_INVALID"
