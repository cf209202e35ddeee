"""A gateway's liveness on PostgreSQL: a session-level advisory lock, held for the
gateway's life on a connection of its own.

The server releases the lock the moment that session ends (the process died, or its
connection did), whatever any clock says; so a sweeping gateway fails another's work only
when that gateway's lease has expired *and* its lock is free. A gateway whose heartbeats
are merely slow keeps its lock and its work. After a database restart every lock is gone
until its holder's next heartbeat takes it again, but then the leases (renewed on the same
beat) are still fresh, so nothing is failed in that window either.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from tensorwasm_common.database import DatabaseUrl, Session
from tensorwasm_common.database.connection import connect_postgres
from tensorwasm_common.database.errors import mapped_errors

# Advisory locks in the two-int4 key space (apart from the single-bigint space that the
# migrations lock uses): (LOCK_CLASS, hashtext(gateway_id)).
LOCK_CLASS = 0x5457  # "TW"
_TRY_LOCK = "SELECT pg_try_advisory_lock(%s, hashtext(%s))"
_IS_FREE = "SELECT pg_try_advisory_xact_lock(?, hashtext(?))"


class LivenessLock:
    """Holds this gateway's lock; `hold` again on each heartbeat re-takes a lost one."""

    def __init__(self, url: DatabaseUrl) -> None:
        self._url = url
        self._conn: psycopg.Connection[Any] | None = None
        self._held = False
        self._lock = threading.Lock()

    def hold(self, gateway_id: str) -> bool:
        """Takes (or checks) the lock; True while held. Raises DatabaseUnavailableError
        when the database does not answer."""
        with self._lock, mapped_errors("postgresql"):
            conn = self._conn
            if conn is not None and not conn.closed:
                try:
                    conn.execute("SELECT 1")
                except psycopg.OperationalError:
                    conn.close()
                    self._held = False
            if self._conn is None or self._conn.closed:
                self._conn = connect_postgres(self._url)
                self._held = False
            if not self._held:  # False while a dead session of ours still holds it
                row = self._conn.execute(_TRY_LOCK, (LOCK_CLASS, gateway_id)).fetchone()
                self._held = bool(row and row[0])
            return self._held

    def release(self) -> None:
        """Ends the session (and so the lock)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn, self._held = None, False


def is_free(session: Session, gateway_id: str) -> bool:
    """True when no live session holds `gateway_id`'s lock (it is taken until the end of
    `session`'s transaction)."""
    return bool(session.execute(_IS_FREE, (LOCK_CLASS, gateway_id)).rows[0][0])
