"""Database URLs: both engines parse; anything else names the setting."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorwasm_common.database import DatabaseUrlError, Engine, parse_database_url

SETTING = "TENSORWASM_X_DATABASE_URL"


def test_sqlite_url_gives_the_absolute_path() -> None:
    url = parse_database_url("sqlite:///var/lib/tw/state.sqlite3", SETTING)
    assert url.engine is Engine.SQLITE
    assert url.sqlite_path == Path("/var/lib/tw/state.sqlite3")


def test_postgres_url_is_kept_and_its_password_redacted() -> None:
    url = parse_database_url("postgresql://tw:s3cret@db.internal:5433/gateway", SETTING)
    assert url.engine is Engine.POSTGRESQL
    assert url.sqlite_path is None
    assert url.redacted == "postgresql://tw:***@db.internal:5433/gateway"


@pytest.mark.parametrize(
    "value",
    [
        "sqlite://relative/path.db",  # two slashes: a host, not a path
        "sqlite:///",
        "mysql://u:p@h:3306/db",
        "/plain/path.sqlite3",
        "postgresql://@host:5432/db",  # no user
        "postgresql://u@host:5432/",  # no database
        "postgresql://u@host:port/db",  # port not a number
    ],
)
def test_malformed_urls_name_the_setting(value: str) -> None:
    with pytest.raises(DatabaseUrlError, match=SETTING):
        parse_database_url(value, SETTING)


def test_error_never_echoes_the_password() -> None:
    with pytest.raises(DatabaseUrlError) as caught:
        parse_database_url("postgresql://u:hunter2@host:5432/", SETTING)
    assert "hunter2" not in str(caught.value)
