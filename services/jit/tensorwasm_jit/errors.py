"""Errors of the jit cache: unknown ops, unsupported targets, malformed specs, artifacts."""

from __future__ import annotations

from tensorwasm_common.errors import DataLossError, InvalidArgumentError, NotFoundError, Reason

__all__ = [
    "ArtifactIntegrityError",
    "ArtifactNotFoundError",
    "InvalidArgumentError",
    "UnknownOpError",
    "UnsupportedTargetError",
]


class UnknownOpError(InvalidArgumentError):
    """The op has no registered emitter; `metadata["op"]` names it."""

    reason = Reason.UNKNOWN_OP


class UnsupportedTargetError(InvalidArgumentError):
    """The GPU target is not one the emitters support; `metadata["target"]` names it."""

    reason = Reason.UNSUPPORTED_TARGET


class ArtifactNotFoundError(NotFoundError):
    """No artifact is stored for the PTX digest and compute capability."""

    reason = Reason.ARTIFACT_NOT_FOUND


class ArtifactIntegrityError(DataLossError):
    """A stored record does not match its digest (it was deleted)."""

    reason = Reason.ARTIFACT_INTEGRITY
