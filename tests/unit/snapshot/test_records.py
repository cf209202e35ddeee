"""SnapshotRecords on a real store in a temp directory: crash leftovers and the index row."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tensorwasm_common.errors import SnapshotCorruptError
from tensorwasm_snapshot.object_store import SnapshotStore
from tensorwasm_snapshot.records import SnapshotRecords

SOURCE = "cd" * 32


@pytest.fixture
def records(tmp_path: Path) -> Iterator[SnapshotRecords]:
    store = SnapshotStore.open(tmp_path, gc_grace_seconds=0)
    yield SnapshotRecords(store)
    store.close()


def create(records: SnapshotRecords, payload: bytes, variant: str = "") -> str:
    creator = records.creator(
        "acme",
        kind=1,
        engine_fingerprint="e",
        source_digest=SOURCE,
        variant=variant,
        payload_size_bytes=len(payload),
    )
    creator.write(payload)
    return creator.commit().id


def test_reference_without_a_row_is_released_on_reconcile(records: SnapshotRecords) -> None:
    # As a crash between the blob's reference and the row's insert would leave it.
    info, _ = records.store.put_bytes(
        b"record", tenant="acme", ref_name="snapshots/snap_" + "0" * 32
    )
    kept = create(records, b"kept")
    assert records.reconcile() == 1
    assert not records.store.index.holds("acme", info.digest)
    assert records.store.collect_garbage().deleted_count == 1
    assert records.get("acme", kept).id == kept  # a record with its row is untouched
    assert records.reconcile() == 0


def test_a_failed_index_write_releases_the_blob(
    records: SnapshotRecords, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(row: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(records.index, "put", fail)
    with pytest.raises(OSError, match="disk full"):
        create(records, b"lost")
    assert records.store.usage("acme").ref_count == 0


def test_record_that_disagrees_with_its_row_is_corrupt(records: SnapshotRecords) -> None:
    first = create(records, b"one", variant="a")
    second = create(records, b"two", variant="b")
    row_b = records.get("acme", second)
    with records.store.index.transaction() as db:  # point a's row at b's record blob
        db.execute(
            "UPDATE snapshots SET record_digest = ? WHERE id = ?", (row_b.record_digest, first)
        )
    with pytest.raises(SnapshotCorruptError, match="index entry"):
        records.open_payload("acme", first)
