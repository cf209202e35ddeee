"""Errors of the jit cache: unknown ops, unsupported targets and malformed specs."""

from __future__ import annotations

from tensorwasm_common.errors import InvalidArgumentError

__all__ = ["InvalidArgumentError", "UnknownOpError", "UnsupportedTargetError"]


class UnknownOpError(InvalidArgumentError):
    """The op has no registered emitter; `metadata["op"]` names it."""

    reason = "UNKNOWN_OP"


class UnsupportedTargetError(InvalidArgumentError):
    """The GPU target is not one the emitters support; `metadata["target"]` names it."""

    reason = "UNSUPPORTED_TARGET"
