"""What an invocation returns (an Outcome, or a Failure) and how wasmtime's errors map to it."""

from __future__ import annotations

import re
from dataclasses import dataclass

import wasmtime

from tensorwasm_executor.wasm import rawcall
from tensorwasm_executor.wasm.values import WasmValue

TRAP_CODES = frozenset(
    {
        "STACK_OVERFLOW", "MEMORY_OUT_OF_BOUNDS", "HEAP_MISALIGNED", "TABLE_OUT_OF_BOUNDS",
        "INDIRECT_CALL_TO_NULL", "BAD_SIGNATURE", "INTEGER_OVERFLOW", "INTEGER_DIVISION_BY_ZERO",
        "BAD_CONVERSION_TO_INTEGER", "UNREACHABLE", "INTERRUPT", "OUT_OF_FUEL", "NULL_REFERENCE",
    }
)  # fmt: skip
# Trap codes that are a limit being enforced rather than a guest bug.
_TRAP_REASONS = {"INTERRUPT": "DEADLINE_EXCEEDED", "OUT_OF_FUEL": "FUEL_EXHAUSTED"}
_MEMORY_LIMIT = re.compile(r"exceeds memory limits|memory.*limit", re.IGNORECASE)


@dataclass(frozen=True)
class Failure:
    """Why a guest did not return: TRAP, DEADLINE_EXCEEDED, FUEL_EXHAUSTED,
    MEMORY_LIMIT_EXCEEDED, PROC_EXIT or CANCELLED."""

    reason: str
    trap_code: str | None
    message: str
    exit_code: int | None


@dataclass(slots=True)
class Outcome:
    """The result of one invocation: results or a failure, plus captured output.

    Read-only by convention, not frozen: every call builds one, and a frozen dataclass's
    `__init__` (one `object.__setattr__` per field) costs several times a plain one's.
    """

    results: tuple[WasmValue, ...] | None
    failure: Failure | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    guest_seconds: float
    # A memory.grow (table.grow) was refused during the call because of the executor's cap
    # (the guest saw -1); see `cap_watch`.
    memory_cap_hit: bool = False
    table_cap_hit: bool = False
    chunks: bytes = b""  # emitted with wasi:tensor (empty when they were streamed)


CANCELLED = Failure("CANCELLED", None, "the call was cancelled", None)


def _trap_code(trap: wasmtime.Trap) -> str:
    try:
        code = trap.trap_code
    except ValueError:  # a code newer than wasmtime-py's TrapCode enum
        return "OTHER"
    return code.name if code is not None and code.name in TRAP_CODES else "OTHER"


def stopped_failure(reason: str) -> Failure:
    """The failure of a guest that the epoch callback stopped, for `reason`."""
    rawcall.take_host_exception()  # clear it, as `failure_of` does
    if reason == "CANCELLED":
        return CANCELLED
    return Failure(reason, "INTERRUPT", "wasm trap: interrupt (the deadline passed)", None)


def failure_of(exc: wasmtime.Trap | wasmtime.WasmtimeError, returns: bool) -> Failure | None:
    """Maps a wasmtime failure to a Failure (None: a successful proc_exit(0))."""
    host = rawcall.take_host_exception()
    if isinstance(exc, wasmtime.ExitTrap):
        if exc.code == 0 and not returns:
            return None
        return Failure("PROC_EXIT", None, f"guest exited with status {exc.code}", exc.code)
    suffix = f" (host function raised {host!r})" if host is not None else ""
    if isinstance(exc, wasmtime.Trap):
        code = _trap_code(exc)
        reason = _TRAP_REASONS.get(code, "TRAP")
        return Failure(reason, code, exc.message + suffix, None)
    if _MEMORY_LIMIT.search(str(exc)):
        return Failure("MEMORY_LIMIT_EXCEEDED", None, str(exc) + suffix, None)
    return Failure("TRAP", "OTHER", str(exc) + suffix, None)
