"""RecordTransfer on a real store in a temp directory: export a record's file, import it back
as a new record, and every refusal of a bad file leaves nothing stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tensorwasm_common.errors import (
    InvalidArgumentError,
    ServiceError,
    SnapshotCorruptError,
    SnapshotFunctionMismatchError,
    SnapshotKindMismatchError,
    SnapshotSignatureError,
    SnapshotTooLargeError,
    SnapshotTruncatedError,
)
from tensorwasm_snapshot import record_format
from tensorwasm_snapshot.object_store import SnapshotStore
from tensorwasm_snapshot.record_format import RecordMeta
from tensorwasm_snapshot.record_index import SnapshotRow
from tensorwasm_snapshot.record_transfer import INSTANCE_STATE, RecordTransfer
from tensorwasm_snapshot.records import SnapshotRecords

KEY = b"s" * 32
SOURCE = "ab" * 32
VARIANT = "counter/" + "1" * 32 + "/save-0011223344556677"
PAYLOAD = b"instance state " * 1000


@pytest.fixture
def records(tmp_path: Path) -> Iterator[SnapshotRecords]:
    store = SnapshotStore.open(tmp_path, gc_grace_seconds=0)
    yield SnapshotRecords(store, signing_key=KEY)
    store.close()


def stored(records: SnapshotRecords, tenant: str = "acme") -> int:
    return len(records.list(tenant)[0])


def original(records: SnapshotRecords) -> tuple[str, bytes]:
    """A stored instance-state record of `acme`: (id, its file as exported)."""
    creator = records.creator(
        "acme",
        kind=INSTANCE_STATE,
        engine_fingerprint="engine-1",
        source_digest=SOURCE,
        variant=VARIANT,
        payload_size_bytes=len(PAYLOAD),
    )
    creator.write(PAYLOAD)
    row = creator.commit()
    _, raw = RecordTransfer(records).export("acme", row.id)
    return row.id, raw


def import_file(
    records: SnapshotRecords,
    raw: bytes,
    tenant: str = "acme",
    *,
    size_bytes: int | None = None,
    max_restore_bytes: int = 0,
    require_signature: bool = False,
) -> SnapshotRow:
    importer = RecordTransfer(records).importer(
        tenant,
        size_bytes=len(raw) if size_bytes is None else size_bytes,
        expected_kind=INSTANCE_STATE,
        max_restore_bytes=max_restore_bytes,
        require_signature=require_signature,
    )
    try:
        importer.write(raw)
        return importer.commit()
    finally:
        importer.abort()


def test_export_then_import_is_a_new_record_with_the_same_payload(
    records: SnapshotRecords,
) -> None:
    snapshot_id, raw = original(records)
    parsed, payload = record_format.decode(raw, signing_key=KEY)
    assert parsed.signed and payload == PAYLOAD and parsed.meta.variant == VARIANT
    row = import_file(records, raw, require_signature=True)
    assert row.id != snapshot_id and row.signed
    assert row.variant.startswith("counter/" + "1" * 32 + "/import-")
    assert (row.kind, row.source_digest, row.payload_digest) == (
        INSTANCE_STATE,
        SOURCE,
        parsed.meta.payload_digest,
    )
    _, chunks = records.open_payload("acme", row.id)
    assert b"".join(chunks) == PAYLOAD
    assert stored(records) == 2  # the original was not replaced


@pytest.mark.parametrize(
    ("damage", "error"),
    [
        (lambda raw: raw[:-40], SnapshotTruncatedError),
        (lambda raw: raw[:10], SnapshotCorruptError),
        (lambda raw: raw[:-40] + bytes([raw[-40] ^ 1]) + raw[-39:], SnapshotSignatureError),
        (lambda raw: b"x" * len(raw), SnapshotCorruptError),
    ],
    ids=["truncated", "cut-in-preamble", "tampered", "not-a-record"],
)
def test_a_bad_file_is_refused_and_nothing_is_stored(
    records: SnapshotRecords, damage: object, error: type[ServiceError]
) -> None:
    _, raw = original(records)
    with pytest.raises(error):
        import_file(records, damage(raw))  # type: ignore[operator]
    assert stored(records) == 1


def test_fewer_bytes_than_declared_is_truncated_more_is_refused(records: SnapshotRecords) -> None:
    _, raw = original(records)
    with pytest.raises(SnapshotTruncatedError) as caught:
        import_file(records, raw[:-1], size_bytes=len(raw))
    assert caught.value.metadata == {
        "declared_bytes": str(len(raw)),
        "received_bytes": str(len(raw) - 1),
    }
    with pytest.raises(InvalidArgumentError):
        import_file(records, raw + b"!", size_bytes=len(raw))
    assert stored(records) == 1


def test_size_guards_refuse_before_and_after_reading(records: SnapshotRecords) -> None:
    _, raw = original(records)
    with pytest.raises(SnapshotTooLargeError):  # the declared file, before any byte
        RecordTransfer(records).importer("acme", size_bytes=len(raw), max_restore_bytes=10)
    with pytest.raises(SnapshotTooLargeError):  # the state the file holds (it compresses)
        import_file(records, raw, max_restore_bytes=len(PAYLOAD) - 1)
    assert stored(records) == 1


def test_unsigned_kind_and_tenant_are_checked(records: SnapshotRecords, tmp_path: Path) -> None:
    _, raw = original(records)
    with pytest.raises(SnapshotFunctionMismatchError):
        import_file(records, raw, tenant="other")
    meta = RecordMeta(1, "engine-1", SOURCE, "", "acme", 0)
    compiled = record_format.encode(meta, b"code", signing_key=KEY)
    with pytest.raises(SnapshotKindMismatchError):
        import_file(records, compiled)
    unsigned = record_format.encode(
        RecordMeta(INSTANCE_STATE, "engine-1", SOURCE, VARIANT, "acme", 0), PAYLOAD
    )
    with pytest.raises(SnapshotSignatureError):  # this store requires its signature
        import_file(records, unsigned)
    assert stored(records) == 1 and stored(records, "other") == 0

    # A store holding no key cannot verify: it refuses when a signature is required.
    keyless = SnapshotRecords(records.store)
    importer = RecordTransfer(keyless).importer(
        "acme", size_bytes=len(unsigned), require_signature=True
    )
    importer.write(unsigned)
    with pytest.raises(SnapshotSignatureError):
        importer.commit()
    importer.abort()
    assert stored(records) == 1
