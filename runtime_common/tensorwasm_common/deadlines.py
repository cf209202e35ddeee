"""Deadline propagation: a downstream call never outlives the request being served.

The server's ErrorInterceptor records the incoming call's deadline for the handler's
task; clients of other services ask `downstream_timeout(default)` for their timeout, so
a caller that gives up (or whose deadline passes) ends the whole chain of calls, and
the executor stops the guest.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Iterator

# Beyond this many seconds a "remaining time" means "no deadline" (gRPC reports huge values).
_NO_DEADLINE = 10.0**8
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "tensorwasm_request_deadline", default=None
)


def enter_request_deadline(
    remaining_seconds: float | None,
) -> contextvars.Token[float | None]:
    """Makes `remaining_seconds` from now the deadline of the request being served; the
    token is for `exit_request_deadline`."""
    deadline = None
    if remaining_seconds is not None and remaining_seconds < _NO_DEADLINE:
        deadline = time.monotonic() + max(remaining_seconds, 0.0)
    return _DEADLINE.set(deadline)


def exit_request_deadline(token: contextvars.Token[float | None]) -> None:
    """Restores the deadline `enter_request_deadline` replaced."""
    # A stream the event loop finalised ends in another context: nothing to reset.
    with contextlib.suppress(ValueError):
        _DEADLINE.reset(token)


@contextlib.contextmanager
def request_deadline(remaining_seconds: float | None) -> Iterator[None]:
    """Makes `remaining_seconds` from now the deadline of the request being served."""
    token = enter_request_deadline(remaining_seconds)
    try:
        yield
    finally:
        exit_request_deadline(token)


def detached_context() -> contextvars.Context:
    """A copy of the current context without the request's deadline, for work that
    outlives the request (an async invocation runs under its own limits, not under the
    deadline of the call that started it)."""
    context = contextvars.copy_context()
    context.run(_DEADLINE.set, None)
    return context


def downstream_timeout(default_seconds: float) -> float:
    """The timeout of a downstream call: `default_seconds`, cut to the time the request
    being served has left (at least 1 ms, so the call fails as DEADLINE_EXCEEDED)."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return default_seconds
    return max(min(default_seconds, deadline - time.monotonic()), 0.001)
