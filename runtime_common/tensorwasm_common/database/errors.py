"""The database layer's errors, one mapping from each driver's exceptions."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

import psycopg
import psycopg_pool

from tensorwasm_common.errors import UnavailableError

RETRY_AFTER_SECONDS = 1.0

# SQLite's OperationalError also covers SQL mistakes; only these mean "try again later".
_SQLITE_TRANSIENT = ("locked", "busy", "disk i/o", "unable to open", "readonly")


class DatabaseUnavailableError(UnavailableError):
    """The database did not answer (down, unreachable, restarting): UNAVAILABLE with
    RetryInfo; the transaction did not commit, so nothing was half-written."""

    def __init__(self, message: str, *, engine: str) -> None:
        super().__init__(
            message,
            metadata={"dependency": "database", "engine": engine},
            retry_after_seconds=RETRY_AFTER_SECONDS,
        )


class ConstraintViolation(Exception):  # noqa: N818 -- a condition the caller handles, not a fault
    """A write broke a primary-key or unique constraint (the row exists)."""


class DatabaseStartError(RuntimeError):
    """The database named by a setting cannot be opened at start; names the setting."""


class SchemaTooNewError(DatabaseStartError):
    """The database holds migrations newer than this release knows."""


@contextlib.contextmanager
def mapped_errors(engine: str) -> Iterator[None]:
    """Turns the drivers' exceptions into ConstraintViolation or DatabaseUnavailableError."""
    try:
        yield
    except (sqlite3.IntegrityError, psycopg.errors.IntegrityError) as exc:
        raise ConstraintViolation(str(exc)) from exc
    except (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout) as exc:
        raise DatabaseUnavailableError(
            f"the database is unavailable: {exc}", engine=engine
        ) from exc
    except sqlite3.OperationalError as exc:
        if not any(word in str(exc).lower() for word in _SQLITE_TRANSIENT):
            raise
        raise DatabaseUnavailableError(
            f"the database is unavailable: {exc}", engine=engine
        ) from exc
