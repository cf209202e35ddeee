"""Transactions on both engines: commit, rollback, constraints, and a database that is
unreachable at start or goes away mid-run."""

from __future__ import annotations

import pytest
from tensorwasm_common.database import (
    ConstraintViolation,
    Database,
    DatabaseStartError,
    DatabaseUnavailableError,
    parse_database_url,
)
from tensorwasm_common.errors import Code

from tests.engines.postgres import PASSWORD, running_postgres

SETTING = "TENSORWASM_X_DATABASE_URL"


def _open(url: str) -> Database:
    database = Database(parse_database_url(url, SETTING), setting=SETTING)
    database.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v BYTEA NOT NULL)")
    return database


def test_commit_rollback_and_duplicate_keys(database_url: str) -> None:
    database = _open(database_url)
    try:
        with database.transaction() as session:
            session.execute("INSERT INTO kv VALUES (?, ?)", ("a", b"\x00\xff"))
        with pytest.raises(RuntimeError), database.transaction() as session:
            session.execute("INSERT INTO kv VALUES (?, ?)", ("b", b"2"))
            raise RuntimeError("abandon the transaction")
        with pytest.raises(ConstraintViolation):
            database.execute("INSERT INTO kv VALUES (?, ?)", ("a", b"again"))
        rows = database.execute("SELECT k, v FROM kv ORDER BY k").rows
        assert rows == [("a", b"\x00\xff")]
        assert database.execute("DELETE FROM kv WHERE k = ?", ("a",)).rowcount == 1
    finally:
        database.close()


def test_percent_signs_in_sql_are_literal(database_url: str) -> None:
    database = _open(database_url)
    try:
        database.execute("INSERT INTO kv VALUES (?, ?)", ("50%", b""))
        assert database.execute("SELECT k FROM kv WHERE k LIKE '%\\%' ESCAPE '\\'").rows == [
            ("50%",)
        ]
    finally:
        database.close()


def test_wrong_password_stops_the_start_naming_the_setting(postgres_server) -> None:  # type: ignore[no-untyped-def]
    url = postgres_server.url().replace(PASSWORD, "not-the-password")
    with pytest.raises(DatabaseStartError, match=SETTING) as caught:
        Database(parse_database_url(url, SETTING), setting=SETTING)
    assert "not-the-password" not in str(caught.value)
    assert "password" in str(caught.value)


def test_unreachable_server_stops_the_start_naming_the_setting(postgres_server) -> None:  # type: ignore[no-untyped-def]
    with running_postgres() as server:
        url = server.url()
        server.stop()
        with pytest.raises(DatabaseStartError, match=SETTING):
            Database(parse_database_url(url, SETTING), setting=SETTING)


def test_server_gone_mid_run_is_unavailable_then_recovers() -> None:
    with running_postgres() as server:
        database = _open(server.url())
        try:
            database.execute("INSERT INTO kv VALUES (?, ?)", ("before", b""))
            server.stop("immediate")
            with pytest.raises(DatabaseUnavailableError) as caught:
                database.execute("INSERT INTO kv VALUES (?, ?)", ("during", b""))
            assert caught.value.code is Code.UNAVAILABLE
            assert caught.value.retry_after_seconds is not None
            server.start()
            database.execute("INSERT INTO kv VALUES (?, ?)", ("after", b""))
            rows = database.execute("SELECT k FROM kv ORDER BY k").rows
            assert rows == [("after",), ("before",)]  # nothing of the failed write
        finally:
            database.close()
