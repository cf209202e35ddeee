"""Errors of the jit cache: unknown ops, unsupported targets, malformed specs, artifacts."""

from __future__ import annotations

from tensorwasm_common.errors import InvalidArgumentError, NotFoundError

__all__ = [
    "ArtifactNotFoundError",
    "InvalidArgumentError",
    "InvalidDigestError",
    "InvalidPageTokenError",
    "TooLargeError",
    "UnknownOpError",
    "UnsupportedTargetError",
]


class UnknownOpError(InvalidArgumentError):
    """The op has no registered emitter; `metadata["op"]` names it."""

    reason = "UNKNOWN_OP"


class UnsupportedTargetError(InvalidArgumentError):
    """The GPU target is not one the emitters support; `metadata["target"]` names it."""

    reason = "UNSUPPORTED_TARGET"


class InvalidDigestError(InvalidArgumentError):
    """A PTX digest is not 64 lowercase hex digits; `metadata["field"]` names it."""

    reason = "INVALID_DIGEST"


class TooLargeError(InvalidArgumentError):
    """An artifact is larger than the jit cache accepts; `metadata["limit_bytes"]` says."""

    reason = "TOO_LARGE"


class InvalidPageTokenError(InvalidArgumentError):
    """A ListKernels page token is not one this service issued."""

    reason = "INVALID_PAGE_TOKEN"


class ArtifactNotFoundError(NotFoundError):
    """No artifact is stored for the PTX digest and compute capability."""

    reason = "ARTIFACT_NOT_FOUND"
