"""Opening a database and running transactions on it, the same way on both engines.

Synchronous by design: the services that keep state (gateway, snapshot store) call their
stores from worker threads (`asyncio.to_thread`), so a blocking driver fits their model.
SQL is written once with `?` placeholders; on PostgreSQL they become psycopg's `%s`.
SQLite keeps one connection behind a lock (WAL, synchronous=FULL), as the services always
did; PostgreSQL uses a psycopg_pool pool whose connections are checked when lent, so a
restarted server is used again by the next transaction.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg_pool

from tensorwasm_common.database.errors import DatabaseStartError, mapped_errors
from tensorwasm_common.database.urls import DatabaseUrl, Engine

CONNECT_TIMEOUT_SECONDS = 5
POOL_TIMEOUT_SECONDS = 5.0
DEFAULT_POOL_SIZE = 8

Params = Sequence[Any]


@dataclass(frozen=True)
class Result:
    """What a statement returned: its rows (all fetched) and the rows it changed."""

    rows: list[tuple[Any, ...]]
    rowcount: int

    def one(self) -> tuple[Any, ...] | None:
        """The first row, or None."""
        return self.rows[0] if self.rows else None


class Session:
    """Statements inside one transaction."""

    def __init__(self, engine: Engine, cursor: Any) -> None:
        self.engine = engine
        self._cursor = cursor

    def execute(self, sql: str, params: Params = ()) -> Result:
        """Runs one statement (`?` placeholders) and fetches its rows."""
        cursor = self._cursor
        if self.engine is Engine.POSTGRESQL:
            cursor.execute(_postgres_sql(sql), params)
            rows = cursor.fetchall() if cursor.description else []
        else:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        return Result([tuple(row) for row in rows], cursor.rowcount)

    def executemany(self, sql: str, params: Sequence[Params]) -> None:
        """Runs one statement once per parameter tuple."""
        if not params:
            return
        text = _postgres_sql(sql) if self.engine is Engine.POSTGRESQL else sql
        self._cursor.executemany(text, params)

    def script(self, sql: str) -> None:
        """Runs `;`-separated statements without parameters (DDL), inside the transaction."""
        for statement in split_statements(sql):
            self._cursor.execute(statement)

    def notify(self, channel: str, payload: str) -> None:
        """PostgreSQL: NOTIFY `channel` when this transaction commits (never for a rolled
        back one). SQLite has no listeners: nothing happens."""
        if self.engine is Engine.POSTGRESQL:
            self._cursor.execute("SELECT pg_notify(%s, %s)", (channel, payload))


class Database:
    """One database, opened from a parsed URL; thread-safe."""

    def __init__(self, url: DatabaseUrl, *, setting: str, pool_size: int = DEFAULT_POOL_SIZE):
        """Opens it; DatabaseStartError (naming `setting`) when it cannot be reached."""
        self.url = url
        self.engine = url.engine
        self.setting = setting
        self._lock = threading.Lock()
        self._sqlite: sqlite3.Connection | None = None
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] | None = None
        if url.engine is Engine.SQLITE:
            self._sqlite = _open_sqlite(url, setting)
        else:
            self._pool = _open_pool(url, setting, pool_size)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """A transaction: committed when the block ends, rolled back when it raises.

        Raises ConstraintViolation for a duplicate key and DatabaseUnavailableError when
        the database does not answer (then nothing of the transaction was written). On
        SQLite it takes the writer lock at once (BEGIN IMMEDIATE), so a read-then-write
        transaction never fails to upgrade.
        """
        with self._transaction("BEGIN IMMEDIATE") as session:
            yield session

    def execute(self, sql: str, params: Params = ()) -> Result:
        """One statement in its own transaction (on SQLite a deferred one: a read does
        not take the writer lock that other processes on the file may be waiting for)."""
        with self._transaction("BEGIN") as session:
            return session.execute(sql, params)

    @contextlib.contextmanager
    def _transaction(self, sqlite_begin: str) -> Iterator[Session]:
        with mapped_errors(self.engine.value):
            if self._sqlite is not None:
                with self._lock:
                    db = self._sqlite
                    db.execute(sqlite_begin)
                    try:
                        yield Session(self.engine, db.cursor())
                    except BaseException:
                        db.execute("ROLLBACK")
                        raise
                    db.execute("COMMIT")
                return
            assert self._pool is not None
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
                yield Session(self.engine, cursor)

    def check(self) -> None:
        """Health: the database answers a query (DatabaseUnavailableError if not)."""
        self.execute("SELECT 1")

    def close(self) -> None:
        """Closes every connection."""
        if self._sqlite is not None:
            with self._lock:
                self._sqlite.close()
        if self._pool is not None:
            self._pool.close()


def connect_postgres(url: DatabaseUrl, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A connection of its own (for LISTEN, which holds it), outside the pool."""
    return psycopg.connect(url.url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_SECONDS)


def split_statements(sql: str) -> list[str]:
    """The statements of a DDL script (no `;` inside literals)."""
    return [part.strip() for part in sql.split(";") if part.strip()]


def _postgres_sql(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


def _open_sqlite(url: DatabaseUrl, setting: str) -> sqlite3.Connection:
    assert url.sqlite_path is not None
    try:
        url.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(url.sqlite_path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
    except (OSError, sqlite3.Error) as exc:
        raise DatabaseStartError(f"{setting}={url.redacted!r}: cannot open: {exc}") from exc
    return db


def _open_pool(
    url: DatabaseUrl, setting: str, pool_size: int
) -> psycopg_pool.ConnectionPool[psycopg.Connection[Any]]:
    try:  # one direct connection first: its error says why (refused, password, no such db)
        connect_postgres(url).close()
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DatabaseStartError(f"{setting}={url.redacted!r}: cannot connect: {reason}") from exc
    pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = psycopg_pool.ConnectionPool(
        url.url,
        min_size=1,
        max_size=pool_size,
        timeout=POOL_TIMEOUT_SECONDS,
        kwargs={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
        check=psycopg_pool.ConnectionPool.check_connection,
        open=False,
        name="tensorwasm",
    )
    try:
        pool.open(wait=True, timeout=POOL_TIMEOUT_SECONDS + CONNECT_TIMEOUT_SECONDS)
    except psycopg_pool.PoolTimeout as exc:
        pool.close()
        raise DatabaseStartError(f"{setting}={url.redacted!r}: cannot connect: {exc}") from exc
    return pool
