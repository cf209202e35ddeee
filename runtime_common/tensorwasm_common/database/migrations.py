"""Versioned schema migrations, applied at start, recorded in `schema_migrations`.

Each component (gateway, snapshot store, ...) numbers its own migrations 1, 2, 3, ...; a
migration has one step per engine (SQL text, or a function of the session for what SQL
alone cannot say, such as "add the column if an older release lacked it"). Pending
migrations run in one transaction: on PostgreSQL under a transaction-scoped advisory lock,
so replicas starting together apply each migration once and the others wait and see it
applied; on SQLite under BEGIN IMMEDIATE (the writer lock). A database that has applied a
migration this release does not know is refused: it was made by a newer release.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tensorwasm_common.database.connection import Database, Session
from tensorwasm_common.database.errors import SchemaTooNewError
from tensorwasm_common.database.urls import Engine

Step = str | Callable[[Session], None]

# pg_advisory_xact_lock key: "TWMIGRAT" in ASCII, one key for every component.
MIGRATION_LOCK_KEY = 0x54574D4947524154

_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    name TEXT NOT NULL,
    applied_time_ns BIGINT NOT NULL,
    PRIMARY KEY (component, version)
)
"""


@dataclass(frozen=True)
class Migration:
    """One schema version: its number, a name, and its step on each engine."""

    version: int
    name: str
    sqlite: Step
    postgresql: Step

    def step(self, engine: Engine) -> Step:
        """The step for `engine`."""
        return self.sqlite if engine is Engine.SQLITE else self.postgresql


def migrate(database: Database, component: str, migrations: Sequence[Migration]) -> int:
    """Applies the component's pending migrations; returns the schema version now.

    Raises:
        SchemaTooNewError: the database has a version newer than the last of `migrations`.
    """
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"{component}: migrations must be numbered 1..n, got {versions}")
    latest = len(migrations)
    with database.transaction() as session:
        if database.engine is Engine.POSTGRESQL:
            session.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK_KEY,))
        session.script(_TABLE)
        applied = applied_versions(session, component)
        if applied and max(applied) > latest:
            raise SchemaTooNewError(
                f"{database.setting}: the database has {component} schema version "
                f"{max(applied)}, newer than this release's {latest}"
            )
        for migration in migrations:
            if migration.version in applied:
                continue
            step = migration.step(database.engine)
            if isinstance(step, str):
                session.script(step)
            else:
                step(session)
            session.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?, ?)",
                (component, migration.version, migration.name, time.time_ns()),
            )
    return latest


def applied_versions(session: Session, component: str) -> set[int]:
    """The component's versions recorded as applied."""
    rows = session.execute(
        "SELECT version FROM schema_migrations WHERE component = ?", (component,)
    ).rows
    return {int(row[0]) for row in rows}


def schema_version(database: Database, component: str) -> int:
    """The component's newest applied version (0: none, or no migrations table yet)."""
    with database.transaction() as session:
        session.script(_TABLE)
        applied = applied_versions(session, component)
    return max(applied, default=0)
