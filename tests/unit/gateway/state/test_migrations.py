"""The gateway's schema migrations: a database made before versioned migrations (SQLite,
"version 1", even one older than its late columns) and a PostgreSQL database at version 1
are brought to the current version at start, their rows kept."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from tensorwasm_common.database import Database, migrate, parse_database_url, schema_version
from tensorwasm_gateway.functions import Registry
from tensorwasm_gateway.invocations import InvocationStore
from tensorwasm_gateway.state import COMPONENT, MIGRATIONS, open_database
from tensorwasm_gateway.state.open import SETTING

# The first release's tables: no functions.config, invocations.owner, gateways.renewals,
# no pending_releases, no schema_migrations.
_FIRST_RELEASE = """
CREATE TABLE functions (tenant TEXT NOT NULL, function_id TEXT NOT NULL,
    module_digest TEXT NOT NULL, module_size_bytes INTEGER NOT NULL,
    exports_json TEXT NOT NULL, create_time_ns INTEGER NOT NULL,
    PRIMARY KEY (tenant, function_id)) WITHOUT ROWID;
CREATE TABLE instances (tenant TEXT NOT NULL, instance_id TEXT NOT NULL,
    function_id TEXT NOT NULL, module_digest TEXT NOT NULL, executor TEXT NOT NULL,
    idle_ttl_ns INTEGER NOT NULL, create_time_ns INTEGER NOT NULL,
    PRIMARY KEY (tenant, instance_id)) WITHOUT ROWID;
CREATE TABLE invocations (tenant TEXT NOT NULL, invocation_id TEXT NOT NULL,
    function_id TEXT NOT NULL, export_name TEXT NOT NULL, state INTEGER NOT NULL,
    request_id TEXT, outcome BLOB NOT NULL DEFAULT x'', error BLOB NOT NULL DEFAULT x'',
    create_time_ns INTEGER NOT NULL, end_time_ns INTEGER, expire_time_ns INTEGER,
    PRIMARY KEY (tenant, invocation_id)) WITHOUT ROWID;
CREATE TABLE gateways (gateway_id TEXT PRIMARY KEY, start_time_ns INTEGER NOT NULL,
    last_seen_ns INTEGER NOT NULL, lease_expire_ns INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO functions VALUES ('t', 'old', '{digest}', 10,
    '[{{"name": "add", "params": ["i32"], "results": []}}]', 7);
INSERT INTO invocations (tenant, invocation_id, function_id, export_name, state, create_time_ns)
    VALUES ('t', '0001', 'old', 'add', 1, 7);
"""
LATEST = len(MIGRATIONS)


def test_a_sqlite_database_from_before_versioning_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executescript(_FIRST_RELEASE.format(digest="ab" * 32))
    registry = Registry(path)
    try:
        assert schema_version(registry.database, COMPONENT) == LATEST
        old = registry.get("t", "old")
        assert (old.module_size_bytes, old.config) == (10, b"")  # the late column's default
        assert registry.uses_module("ab" * 32)
        store = InvocationStore(registry)
        assert store.get("t", "0001", 0).owner == ""  # no owner: failed by the first start
        assert store.fail_orphaned("gw", {}, b"gone", 1, 2) == 1
        assert not store.renew_lease("gw", 1, 10)
    finally:
        registry.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        indexes = {
            row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
    assert "functions_by_module" in indexes


def test_a_postgres_database_at_version_1_is_migrated(postgres_url: str) -> None:
    database = Database(parse_database_url(postgres_url, SETTING), setting=SETTING)
    try:
        assert migrate(database, COMPONENT, MIGRATIONS[:1]) == 1
        database.execute(
            "INSERT INTO functions VALUES (?, ?, ?, ?, ?, ?, ?)",
            ("t", "old", "cd" * 32, 10, "[]", 7, b""),
        )
    finally:
        database.close()
    migrated = open_database(parse_database_url(postgres_url, SETTING))
    try:
        assert schema_version(migrated, COMPONENT) == LATEST
        rows = migrated.execute(
            "SELECT function_id FROM functions WHERE module_digest = ?", ("cd" * 32,)
        ).rows
        assert rows == [("old",)]
        assert migrated.execute("SELECT COUNT(*) FROM rate_buckets").rows == [(0,)]
    finally:
        migrated.close()
