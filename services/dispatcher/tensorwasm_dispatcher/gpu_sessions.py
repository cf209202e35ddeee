"""GPU sessions: the kernels, device buffers and stream one guest store uses, across requests.

The executor names a session per guest store (an invocation, or a live instance) and
ends it with its last request; a session nobody ends (an executor that died) is closed
once idle for the TTL. Sessions are keyed by (tenant, session id), so one tenant can
never reach another's kernels. A tenant holds at most `max_sessions_per_tenant` at once:
each holds a stream, events and device memory the tenant's quota does not see all of.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tensorwasm_common.gpu_abi import AbiError, AbiFailure

from tensorwasm_dispatcher.backends import Backend, DeviceBuffer, Kernel, Stream

_log = logging.getLogger(__name__)


@dataclass(eq=False)
class GpuSession:
    """One guest session: its stream, its loaded kernels (by the executor's kernel id) and
    its device-resident buffers (by the executor's handle)."""

    tenant: str
    session_id: str
    stream: Stream = field(repr=False)
    kernels: dict[int, Kernel] = field(default_factory=dict, repr=False)
    buffers: dict[int, DeviceBuffer] = field(default_factory=dict, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    last_used: float = 0.0
    busy: int = 0
    ended: bool = False


class GpuSessionTable:
    """The open sessions; thread-safe. A session's work is serialised by its own lock."""

    def __init__(
        self,
        backend: Backend,
        *,
        idle_ttl_seconds: float,
        max_sessions_per_tenant: int = 64,
        on_count: Callable[[str, int], object] = lambda tenant, delta: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backend = backend
        self._ttl = idle_ttl_seconds
        self._max_per_tenant = max_sessions_per_tenant
        self._per_tenant: dict[str, int] = {}
        self._on_count = on_count
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[tuple[str, str], GpuSession] = {}
        # Releases what else a closing session holds (its device buffers); set by the
        # dispatcher that owns them.
        self.on_close: Callable[[GpuSession], None] = lambda session: None

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def checkout(self, tenant: str, session_id: str) -> GpuSession:
        """The session (opened on first use), marked busy until `checkin`; its lock is held.

        Raises:
            AbiFailure: QUOTA_EXCEEDED: opening it would pass the tenant's session cap.
        """
        key = (tenant, session_id)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                if self._per_tenant.get(tenant, 0) >= self._max_per_tenant:
                    raise AbiFailure(
                        AbiError.QUOTA_EXCEEDED,
                        f"the tenant has {self._max_per_tenant} GPU sessions open already",
                    )
                session = GpuSession(tenant, session_id, self._backend.open_stream())
                self._sessions[key] = session
                self._per_tenant[tenant] = self._per_tenant.get(tenant, 0) + 1
                self._on_count(tenant, 1)
            session.busy += 1
        session.lock.acquire()
        return session

    def checkin(self, session: GpuSession, *, end: bool) -> None:
        """Ends one request on the session; with `end`, closes the session too."""
        session.last_used = self._clock()
        session.lock.release()
        with self._lock:
            session.busy -= 1
            if end and not session.ended:
                self._forget(session)
            closing = session.ended and not session.busy
        if closing:
            self._close(session)

    def expire(self) -> int:
        """Closes the sessions idle for the TTL; returns how many."""
        now = self._clock()
        with self._lock:
            idle = [
                s for s in self._sessions.values() if not s.busy and now - s.last_used >= self._ttl
            ]
            for session in idle:
                self._forget(session)
        for session in idle:
            self._close(session)
        return len(idle)

    def close_all(self) -> None:
        """Closes every session (shutdown)."""
        with self._lock:
            everything = list(self._sessions.values())
            for session in everything:
                self._forget(session)
        for session in everything:
            if not session.busy:
                self._close(session)

    def _forget(self, session: GpuSession) -> None:
        """Unregisters a session (the table lock must be held)."""
        del self._sessions[(session.tenant, session.session_id)]
        session.ended = True
        remaining = self._per_tenant[session.tenant] - 1
        if remaining:
            self._per_tenant[session.tenant] = remaining
        else:
            del self._per_tenant[session.tenant]
        self._on_count(session.tenant, -1)

    def _close(self, session: GpuSession) -> None:
        """Frees a forgotten session's buffers, unloads its kernels, releases its stream."""
        try:
            self.on_close(session)  # sees the kernels still loaded (their charges)
            kernels, session.kernels = list(session.kernels.values()), {}
            for kernel in kernels:
                self._backend.unload(kernel)
            self._backend.close_stream(session.stream)
        except Exception:  # a device error must not take the request or the sweeper down
            _log.exception("closing a session failed", extra={"tenant": session.tenant})
