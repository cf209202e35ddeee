"""Database URLs: `sqlite:///ABS/PATH` or `postgresql://USER[:PASSWORD]@HOST[:PORT]/DB`."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit


class Engine(enum.Enum):
    """The database engines a service can keep its state on."""

    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


class DatabaseUrlError(ValueError):
    """A database URL setting is not a URL this release can open; names the setting."""


@dataclass(frozen=True)
class DatabaseUrl:
    """A parsed database URL: the engine and where its data is."""

    engine: Engine
    url: str  # as given (may hold a password: log `redacted`, never this)
    sqlite_path: Path | None = None  # SQLite only: the database file

    @property
    def redacted(self) -> str:
        """The URL with any password replaced by `***`, for logs and error messages."""
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return urlunsplit(parts._replace(netloc=netloc))


def sqlite_url(path: Path) -> str:
    """The `sqlite:///` URL of a database file (made absolute)."""
    return f"sqlite://{path.absolute()}"


def parse_database_url(value: str, setting: str) -> DatabaseUrl:
    """Parses `value`, the value of the setting named `setting`.

    Raises:
        DatabaseUrlError: the value is not `sqlite:///ABS/PATH` or
            `postgresql://USER[:PASSWORD]@HOST[:PORT]/DB`; the message names the setting.
    """
    parts = urlsplit(value)
    if parts.scheme == "sqlite":
        if parts.netloc or not parts.path.startswith("/") or parts.path == "/":
            raise _error(setting, value, "expected sqlite:///ABSOLUTE/PATH (three slashes)")
        return DatabaseUrl(Engine.SQLITE, value, Path(unquote(parts.path)))
    if parts.scheme in ("postgresql", "postgres"):
        try:
            port = parts.port
        except ValueError:
            raise _error(setting, value, "the port is not a number") from None
        del port
        if not parts.username or not parts.hostname:
            raise _error(setting, value, "expected postgresql://USER[:PASSWORD]@HOST:PORT/DB")
        database = parts.path.lstrip("/")
        if not database or "/" in database:
            raise _error(setting, value, "the URL names no database (…@HOST:PORT/DB)")
        return DatabaseUrl(Engine.POSTGRESQL, value)
    raise _error(
        setting,
        value,
        "expected sqlite:///ABS/PATH or postgresql://USER[:PASSWORD]@HOST:PORT/DB",
    )


def _error(setting: str, value: str, why: str) -> DatabaseUrlError:
    shown = value
    parts = urlsplit(value)
    if parts.password:
        shown = value.replace(f":{parts.password}@", ":***@", 1)
    return DatabaseUrlError(f"{setting}={shown!r}: {why}")
