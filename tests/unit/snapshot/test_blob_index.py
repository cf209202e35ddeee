"""The index's schema versions: an index made before migrations is adopted as it is (its
objects and references kept), and one made by a newer release is refused at open. Orphan
record references: released at once on a local index, only once old on a shared one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from tensorwasm_common.database import SchemaTooNewError
from tensorwasm_snapshot.object_store import SnapshotStore
from tensorwasm_snapshot.records import SHARED_ORPHAN_MIN_AGE_SECONDS, SnapshotRecords

SECOND = 1_000_000_000
ORPHAN = "snapshots/snap_" + "0" * 32  # a record reference whose row was never written

# The schema as the store created it before versioned migrations (SQLite user_version 2).
_PRE_MIGRATIONS_SCHEMA = """
CREATE TABLE objects (digest TEXT PRIMARY KEY, size_bytes INTEGER NOT NULL,
    stored_size_bytes INTEGER NOT NULL, create_time_ns INTEGER NOT NULL,
    touch_time_ns INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE refs (tenant TEXT NOT NULL,
    digest TEXT NOT NULL REFERENCES objects (digest) ON DELETE CASCADE,
    ref_name TEXT NOT NULL, create_time_ns INTEGER NOT NULL,
    PRIMARY KEY (tenant, digest, ref_name)) WITHOUT ROWID;
CREATE INDEX refs_by_digest ON refs (digest);
CREATE TABLE snapshots (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, kind INTEGER NOT NULL,
    engine_fingerprint TEXT NOT NULL, source_digest TEXT NOT NULL, variant TEXT NOT NULL,
    payload_digest TEXT NOT NULL, payload_size_bytes INTEGER NOT NULL,
    record_digest TEXT NOT NULL REFERENCES objects (digest) ON DELETE CASCADE,
    record_size_bytes INTEGER NOT NULL, create_time_ns INTEGER NOT NULL,
    format_version INTEGER NOT NULL, signed INTEGER NOT NULL,
    UNIQUE (tenant, kind, source_digest, variant, engine_fingerprint)) WITHOUT ROWID;
PRAGMA user_version = 2;
"""


def test_an_index_from_before_migrations_is_adopted(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path)  # a blob file, then an index of the old shape
    info, _ = store.put_bytes(b"kept across the upgrade")
    store.close()
    (tmp_path / "index.sqlite3").unlink()
    db = sqlite3.connect(tmp_path / "index.sqlite3")
    db.executescript(_PRE_MIGRATIONS_SCHEMA)
    db.execute(
        "INSERT INTO objects VALUES (?, ?, ?, 1, 1)",
        (info.digest, info.size_bytes, info.stored_size_bytes),
    )
    db.execute("INSERT INTO refs VALUES ('acme', ?, 'functions/a', 1)", (info.digest,))
    db.commit()
    db.close()

    upgraded = SnapshotStore.open(tmp_path)
    try:
        assert upgraded.index_problems == []
        assert upgraded.usage("acme").ref_count == 1
        assert upgraded.index.get(info.digest) is not None
        with upgraded.index.reading() as session:
            rows = session.execute("SELECT component, version FROM schema_migrations").rows
        assert rows == [("snapshot", 1)]
    finally:
        upgraded.close()


def test_an_index_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    SnapshotStore.open(tmp_path).close()
    db = sqlite3.connect(tmp_path / "index.sqlite3")
    db.execute("INSERT INTO schema_migrations VALUES ('snapshot', 2, 'future', 0)")
    db.commit()
    db.close()
    with pytest.raises(SchemaTooNewError, match="TENSORWASM_SNAPSHOT_DATABASE_URL"):
        SnapshotStore.open(tmp_path)


def test_a_shared_index_keeps_a_young_orphan_record_reference(
    tmp_path: Path, postgres_url: str
) -> None:
    # On PostgreSQL another replica may be between a record's reference and its row: a
    # replica opening then releases only orphan references older than the minimum age.
    now = [1_700_000_000 * SECOND]
    store = SnapshotStore.open(tmp_path, index_url=postgres_url, clock=lambda: now[0])
    try:
        records = SnapshotRecords(store, clock=lambda: now[0])
        info, _ = store.put_bytes(b"a record blob", tenant="acme", ref_name=ORPHAN)
        assert records.reconcile() == 0
        assert store.usage("acme").ref_count == 1
        now[0] += round(SHARED_ORPHAN_MIN_AGE_SECONDS * SECOND)
        assert records.reconcile() == 1
        assert store.usage("acme").ref_count == 0
        assert store.index.get(info.digest) is not None  # released, collectable after grace
    finally:
        store.close()


def test_a_local_index_releases_orphan_record_references_at_once(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path)
    try:
        store.put_bytes(b"a record blob", tenant="acme", ref_name=ORPHAN)
        assert SnapshotRecords(store).reconcile() == 1
        assert store.usage("acme").ref_count == 0
    finally:
        store.close()
