"""A damaged index is found when the store opens, garbage is not collected while it is, and
`rebuild_index` makes a working store again whose blobs and records are all still there."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
from tensorwasm_snapshot.errors import IndexDamagedError
from tensorwasm_snapshot.index_repair import HOLD_TENANT, rebuild_index, release_holds
from tensorwasm_snapshot.object_store import INDEX_FILE, SnapshotStore
from tensorwasm_snapshot.records import SnapshotRecords

SOURCE = "cd" * 32
MODULE_REF = "functions/add"


@dataclass
class Fixture:
    """A store (closed) with a live module, a record, and one unreferenced blob."""

    root: Path
    module: str
    garbage: str
    record_id: str


@pytest.fixture
def filled(tmp_path: Path) -> Fixture:
    store = SnapshotStore.open(tmp_path, gc_grace_seconds=0)
    try:
        module, _ = store.put_bytes(b"\0asm live module", tenant="acme", ref_name=MODULE_REF)
        garbage, _ = store.put_bytes(b"nobody holds this")
        records = SnapshotRecords(store)
        creator = records.creator(
            "fleet-artifacts",
            kind=1,
            engine_fingerprint="e",
            source_digest=SOURCE,
            variant="",
            payload_size_bytes=8,
        )
        creator.write(b"compiled")
        record_id = creator.commit().id
    finally:
        store.close()  # checkpoints the WAL into the database file
    return Fixture(tmp_path, module.digest, garbage.digest, record_id)


def damage_a_ref_row(root: Path, digest: str) -> None:
    """Rewrites the digest of the module's reference, as a damaged row would read."""
    db = sqlite3.connect(root / INDEX_FILE, isolation_level=None)
    db.execute("UPDATE refs SET digest = ? WHERE ref_name = ?", ("ee" * 32, MODULE_REF))
    db.close()


def damage_the_refs_by_digest_index(root: Path, digest: str) -> None:
    """Changes the module's digest inside the `refs_by_digest` b-tree page only (the table
    is intact): the collector's NOT EXISTS lookup goes through that index."""
    db = sqlite3.connect(root / INDEX_FILE)
    (page,) = db.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = 'refs_by_digest'"
    ).fetchone()
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    db.close()
    path = root / INDEX_FILE
    data = bytearray(path.read_bytes())
    start = (page - 1) * page_size
    at = data.index(digest.encode(), start, start + page_size)
    data[at] = ord("0") if data[at] != ord("0") else ord("1")
    path.write_bytes(bytes(data))


def open_store(root: Path) -> tuple[SnapshotStore, SnapshotRecords]:
    store = SnapshotStore.open(root, gc_grace_seconds=0)
    records = SnapshotRecords(store)
    records.reconcile()
    return store, records


@pytest.mark.parametrize("damage", [damage_a_ref_row, damage_the_refs_by_digest_index])
def test_a_damaged_index_stops_gc_before_it_deletes_a_live_module(
    filled: Fixture, damage: object
) -> None:
    damage(filled.root, filled.module)  # type: ignore[operator]
    store, _ = open_store(filled.root)
    try:
        assert store.index_problems
        with pytest.raises(IndexDamagedError) as caught:
            store.collect_garbage()
        assert (caught.value.code.name, caught.value.reason) == (
            "FAILED_PRECONDITION",
            "INDEX_DAMAGED",
        )
        assert b"".join(store.open_verified(filled.module)) == b"\0asm live module"
    finally:
        store.close()

    report = rebuild_index(filled.root)
    assert (report.objects, report.damaged, report.records) == (3, 0, 1)
    store, records = open_store(filled.root)
    try:
        assert store.index_problems == []
        assert store.collect_garbage().deleted_count == 0  # every object is held
        assert b"".join(store.open_verified(filled.module)) == b"\0asm live module"
        row, payload = records.open_payload("fleet-artifacts", filled.record_id)
        assert b"".join(payload) == b"compiled" and row.id == filled.record_id
    finally:
        store.close()


def test_a_malformed_index_file_is_refused_then_rebuilt(filled: Fixture) -> None:
    path = filled.root / INDEX_FILE
    path.write_bytes(path.read_bytes()[:1000] + b"\xff" * 3000)
    with pytest.raises(IndexDamagedError):
        open_store(filled.root)

    report = rebuild_index(filled.root)
    assert (report.objects, report.records) == (3, 1)
    assert Path(report.kept_as).name.startswith(INDEX_FILE + ".damaged-")
    store, records = open_store(filled.root)
    try:
        assert store.index_problems == []
        for digest in (filled.module, filled.garbage):
            assert b"".join(store.open_verified(digest))
        # The old id is unreadable: the record is found by its key, under a new id.
        row = records.find("fleet-artifacts", 1, SOURCE, "", "e")
        assert b"".join(records.open_payload("fleet-artifacts", row.id)[1]) == b"compiled"
        assert store.usage(HOLD_TENANT).object_count == 3
    finally:
        store.close()


def test_an_emptied_index_file_is_damage_not_a_new_store(filled: Fixture) -> None:
    (filled.root / INDEX_FILE).write_bytes(b"")
    store, _ = open_store(filled.root)
    try:
        assert any("empty" in problem for problem in store.index_problems)
        with pytest.raises(IndexDamagedError):
            store.collect_garbage()
    finally:
        store.close()


def test_references_that_survive_are_kept_and_holds_release_only_garbage(
    filled: Fixture,
) -> None:
    damage_the_refs_by_digest_index(filled.root, filled.module)  # the refs table is readable
    report = rebuild_index(filled.root)
    assert report.references == 1  # acme's reference to the module, copied
    assert release_holds(filled.root) == 3
    store, records = open_store(filled.root)
    try:
        assert store.collect_garbage().deleted_count == 1  # only the unreferenced blob
        assert b"".join(store.open_verified(filled.module)) == b"\0asm live module"
        assert records.get("fleet-artifacts", filled.record_id).id == filled.record_id
    finally:
        store.close()
