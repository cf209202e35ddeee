"""LISTEN/NOTIFY: notifications arrive on commit only; a lost connection is noticed (not
live) and listening resumes, telling the owner it may have missed some."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

from tensorwasm_common.database import Database, Listener, parse_database_url

from tests.engines.postgres import running_postgres

SETTING = "TENSORWASM_X_DATABASE_URL"
DEADLINE_SECONDS = 60.0


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        time.sleep(0.02)


def test_notifications_arrive_on_commit_and_listening_survives_a_restart() -> None:
    with running_postgres() as server:
        url = parse_database_url(server.url(), SETTING)
        database = Database(url, setting=SETTING)
        received: queue.Queue[str] = queue.Queue()
        reconnects = threading.Semaphore(0)
        listener = Listener(url, "changes", received.put, reconnects.release)
        listener.start()
        try:
            assert listener.live
            assert reconnects.acquire(timeout=DEADLINE_SECONDS)
            try:
                with database.transaction() as session:
                    session.notify("changes", "rolled-back")
                    raise RuntimeError("abandon")
            except RuntimeError:
                pass
            with database.transaction() as session:
                session.notify("changes", "committed")
            assert received.get(timeout=DEADLINE_SECONDS) == "committed"

            server.stop("immediate")
            _wait_for(lambda: not listener.live)
            server.start()
            _wait_for(lambda: listener.live)
            assert reconnects.acquire(timeout=DEADLINE_SECONDS)  # told to forget
            database.execute("SELECT pg_notify(?, ?)", ("changes", "after"))
            assert received.get(timeout=DEADLINE_SECONDS) == "after"
            assert received.empty()
        finally:
            listener.stop()
            database.close()
