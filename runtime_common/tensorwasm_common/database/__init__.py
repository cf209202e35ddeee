"""Service state in SQLite (the embedded default) or PostgreSQL, behind one small layer:
URLs, connections and transactions, versioned migrations, and LISTEN/NOTIFY."""

from tensorwasm_common.database.connection import Database, Result, Session
from tensorwasm_common.database.errors import (
    ConstraintViolation,
    DatabaseStartError,
    DatabaseUnavailableError,
    SchemaTooNewError,
)
from tensorwasm_common.database.listener import Listener
from tensorwasm_common.database.migrations import Migration, migrate, schema_version
from tensorwasm_common.database.urls import (
    DatabaseUrl,
    DatabaseUrlError,
    Engine,
    parse_database_url,
    sqlite_url,
)

__all__ = [
    "ConstraintViolation",
    "Database",
    "DatabaseStartError",
    "DatabaseUnavailableError",
    "DatabaseUrl",
    "DatabaseUrlError",
    "Engine",
    "Listener",
    "Migration",
    "Result",
    "SchemaTooNewError",
    "Session",
    "migrate",
    "parse_database_url",
    "schema_version",
    "sqlite_url",
]
