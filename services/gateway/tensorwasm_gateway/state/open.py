"""Opening the gateway's database at start: connect, then apply pending migrations."""

from __future__ import annotations

from pathlib import Path

from tensorwasm_common.database import Database, DatabaseUrl, migrate, parse_database_url
from tensorwasm_common.database.urls import sqlite_url

from tensorwasm_gateway.state.migrations import COMPONENT, MIGRATIONS

SETTING = "TENSORWASM_GATEWAY_DATABASE_URL"


def open_database(target: DatabaseUrl | Path) -> Database:
    """The migrated database at `target` (a URL, or an SQLite file's path).

    Raises DatabaseStartError (naming the setting) when it cannot be opened.
    """
    if isinstance(target, Path):
        target = parse_database_url(sqlite_url(target), SETTING)
    database = Database(target, setting=SETTING)
    try:
        migrate(database, COMPONENT, MIGRATIONS)
    except BaseException:
        database.close()
        raise
    return database
