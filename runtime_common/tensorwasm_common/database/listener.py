"""LISTEN on a PostgreSQL channel from a thread of its own, reconnecting when it drops.

`live` says whether notifications are being received now: a cache that relies on them for
invalidation must not be trusted while it is False (a notification sent while the listener
was disconnected is lost), and `on_reconnect` runs each time listening resumes so that the
cache can forget what it may have missed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from tensorwasm_common.database.connection import connect_postgres
from tensorwasm_common.database.urls import DatabaseUrl

_log = logging.getLogger(__name__)

POLL_SECONDS = 0.2
RECONNECT_BACKOFF_SECONDS = (0.1, 0.2, 0.5, 1.0)


class Listener:
    """Calls `on_notify(payload)` for each notification on `channel`."""

    def __init__(
        self,
        url: DatabaseUrl,
        channel: str,
        on_notify: Callable[[str], None],
        on_reconnect: Callable[[], None],
    ) -> None:
        self._url = url
        self._channel = channel
        self._on_notify = on_notify
        self._on_reconnect = on_reconnect
        self._stopping = threading.Event()
        self._live = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"listen-{channel}", daemon=True)

    @property
    def live(self) -> bool:
        """True while the listener holds a connection that LISTENs."""
        return self._live.is_set()

    def start(self, timeout_seconds: float = 10.0) -> None:
        """Starts listening; returns once live (or after the timeout, not live yet)."""
        self._thread.start()
        self._live.wait(timeout_seconds)

    def stop(self) -> None:
        """Stops the thread (within one poll)."""
        self._stopping.set()
        self._thread.join()

    def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                with connect_postgres(self._url) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    self._on_reconnect()  # anything before this moment may have been missed
                    self._live.set()
                    attempt = 0
                    self._receive(conn)
            except psycopg.Error as exc:
                _log.warning("listener on %r lost its connection: %s", self._channel, exc)
            finally:
                self._live.clear()
            delay = RECONNECT_BACKOFF_SECONDS[min(attempt, len(RECONNECT_BACKOFF_SECONDS) - 1)]
            attempt += 1
            self._stopping.wait(delay)

    def _receive(self, conn: psycopg.Connection[Any]) -> None:
        while not self._stopping.is_set():
            for notify in conn.notifies(timeout=POLL_SECONDS):
                self._on_notify(notify.payload)
            conn.execute("SELECT 1")  # notices a dead server within one poll
