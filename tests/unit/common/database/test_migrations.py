"""Versioned migrations on both engines: applied once, in order, recorded; newer schemas
refused; concurrent starters on PostgreSQL apply each migration once."""

from __future__ import annotations

import threading

import pytest
from tensorwasm_common.database import (
    Database,
    Migration,
    SchemaTooNewError,
    Session,
    migrate,
    parse_database_url,
    schema_version,
)

SETTING = "TENSORWASM_X_DATABASE_URL"

V1 = Migration(
    1,
    "items",
    "CREATE TABLE items (id TEXT PRIMARY KEY)",
    "CREATE TABLE items (id TEXT PRIMARY KEY)",
)


def _add_size(session: Session) -> None:
    session.execute("ALTER TABLE items ADD COLUMN size INTEGER NOT NULL DEFAULT 0")


V2 = Migration(2, "items.size", _add_size, _add_size)


def _open(url: str) -> Database:
    return Database(parse_database_url(url, SETTING), setting=SETTING)


def test_migrations_apply_in_order_once(database_url: str) -> None:
    database = _open(database_url)
    try:
        assert schema_version(database, "demo") == 0
        assert migrate(database, "demo", [V1]) == 1
        database.execute("INSERT INTO items VALUES (?)", ("kept",))
        assert migrate(database, "demo", [V1, V2]) == 2
        assert migrate(database, "demo", [V1, V2]) == 2  # again: nothing to do
        assert database.execute("SELECT id, size FROM items").rows == [("kept", 0)]
        assert schema_version(database, "demo") == 2
        assert schema_version(database, "other") == 0  # versions are per component
    finally:
        database.close()


def test_a_failed_migration_leaves_the_previous_version(database_url: str) -> None:
    database = _open(database_url)
    broken = Migration(
        2,
        "broken",
        "ALTER TABLE nowhere ADD COLUMN x INTEGER",
        "ALTER TABLE nowhere ADD COLUMN x INTEGER",
    )
    try:
        migrate(database, "demo", [V1])
        with pytest.raises(Exception, match="nowhere"):
            migrate(database, "demo", [V1, broken])
        assert schema_version(database, "demo") == 1
    finally:
        database.close()


def test_a_newer_schema_is_refused(database_url: str) -> None:
    database = _open(database_url)
    try:
        migrate(database, "demo", [V1, V2])
        with pytest.raises(SchemaTooNewError, match=SETTING):
            migrate(database, "demo", [V1])
    finally:
        database.close()


def test_concurrent_starters_apply_each_migration_once(postgres_url: str) -> None:
    starters = [_open(postgres_url) for _ in range(4)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(starters))

    def start(database: Database) -> None:
        barrier.wait()
        try:
            migrate(database, "demo", [V1, V2])
        except BaseException as exc:  # collected: asserted below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(db,)) for db in starters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        rows = (
            starters[0]
            .execute(
                "SELECT version FROM schema_migrations WHERE component = ? ORDER BY version",
                ("demo",),
            )
            .rows
        )
        assert rows == [(1,), (2,)]
    finally:
        for database in starters:
            database.close()
