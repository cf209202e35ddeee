"""Rebuilding the store's index from the verified blob files, and releasing the holds that a
rebuild puts on every object (`python -m tensorwasm_snapshot rebuild-index | release-holds`).

What a rebuild recovers, and what it cannot:
- objects: every blob file that verifies (header, size, BLAKE3 of the plaintext) gets its
  row back; a damaged file is left where it is, unindexed, and counted.
- records: every verified blob that is a snapshot record (signature checked with the
  store's key) is indexed again, under its old id where the old index still names it, else
  under a new one, with its tenant's `snapshots/<id>` reference; of several records of one
  key the newest is indexed.
- references are not derivable from bytes: which functions use a module is the gateway
  registry's knowledge. Those still readable in the old index that name a verified object
  are copied, and every object also gets a hold (tenant `index-rebuild`), so nothing is
  collected until an operator has made sure the real references are in place and runs
  `release-holds`; until then, garbage is kept, never a live object deleted.

The damaged database is kept beside the new one (`index.sqlite3.damaged-<ns>`). Run with the
store stopped: the index and the blob directory belong to one process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from tensorwasm_common.errors import (
    BlobIntegrityError,
    SnapshotCorruptError,
    SnapshotSignatureError,
    UnsupportedSnapshotFormatError,
)
from tensorwasm_common.tenants import TENANT_PATTERN

from tensorwasm_snapshot import record_format
from tensorwasm_snapshot.blob_index import BlobIndex
from tensorwasm_snapshot.blobstore import BlobStore
from tensorwasm_snapshot.object_store import INDEX_FILE, REF_NAME_PATTERN, Clock
from tensorwasm_snapshot.record_index import REF_PREFIX, RecordIndex, SnapshotRow
from tensorwasm_snapshot.records import ID_PATTERN

__all__ = ["HOLD_REF_NAME", "HOLD_TENANT", "RebuildReport", "rebuild_index", "release_holds"]

HOLD_TENANT = "index-rebuild"
HOLD_REF_NAME = "hold"
_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RebuildReport:
    """What a rebuild found and restored."""

    objects: int = 0  # verified blob files, indexed and held
    damaged: int = 0  # blob files that failed verification, left unindexed
    records: int = 0  # snapshot records indexed again
    references: int = 0  # references copied from the old index
    kept_as: str = ""  # where the old database was moved ("" if there was none)


def rebuild_index(
    root: Path,
    *,
    signing_key: bytes | None = None,
    max_blob_bytes: int = 256 << 20,
    chunk_bytes: int = 1 << 20,
    clock: Clock = time.time_ns,
) -> RebuildReport:
    """Replaces `root`'s index with one rebuilt from its blob files (see the module doc)."""
    blobs = BlobStore(root, max_blob_bytes=max_blob_bytes, chunk_bytes=chunk_bytes)
    kept_as = _move_aside(blobs.root / INDEX_FILE, clock())
    old_refs, old_records = _salvage(kept_as) if kept_as is not None else ([], {})
    index = BlobIndex.open_file(blobs.root / INDEX_FILE)
    try:
        now = clock()
        present, damaged, records = set(), 0, []
        for digest in blobs.digests():
            try:
                info, first_chunk = blobs.stat(digest), _first_verified_chunk(blobs, digest)
            except BlobIntegrityError:
                damaged += 1
                _log.warning("blob failed verification; left unindexed", extra={"digest": digest})
                continue
            mtime_ns = os.stat(blobs.path_of(digest)).st_mtime_ns
            index.record(info, now, create_time_ns=mtime_ns)
            index.add_ref(HOLD_TENANT, digest, HOLD_REF_NAME, now)
            present.add(digest)
            if first_chunk.startswith(record_format.MAGIC):
                record = _record_row(blobs, digest, signing_key, old_records)
                if record is not None:
                    records.append(record)
        restored = _restore_records(index, records, now)
        copied = 0
        for tenant, digest, ref_name in old_refs:
            valid = TENANT_PATTERN.fullmatch(tenant) and REF_NAME_PATTERN.fullmatch(ref_name)
            if valid and digest in present and not ref_name.startswith(REF_PREFIX):
                copied += int(index.add_ref(tenant, digest, ref_name, now)[1])
    finally:
        index.close()
    return RebuildReport(len(present), damaged, restored, copied, str(kept_as or ""))


def release_holds(root: Path, *, clock: Clock = time.time_ns) -> int:
    """Removes the holds a rebuild put on every object (their grace period starts now);
    -> how many. Run once the real references are in place, with the store stopped."""
    index = BlobIndex.open_file(Path(root) / INDEX_FILE)
    try:
        with index.reading() as db:
            digests = [
                str(digest)
                for (digest,) in db.execute(
                    "SELECT digest FROM refs WHERE tenant = ? AND ref_name = ?",
                    (HOLD_TENANT, HOLD_REF_NAME),
                ).rows
            ]
        now = clock()
        return sum(index.remove_ref(HOLD_TENANT, d, HOLD_REF_NAME, now) for d in digests)
    finally:
        index.close()


def _move_aside(path: Path, now_ns: int) -> Path | None:
    """Renames the database and its WAL companions to `<name>.damaged-<now_ns>`; -> its new
    path, None when there was no database."""
    if not path.exists():
        return None
    target = path.with_name(f"{path.name}.damaged-{now_ns}")
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.replace(f"{path}{suffix}", f"{target}{suffix}")
    return target


def _salvage(path: Path) -> tuple[list[tuple[str, str, str]], dict[str, tuple[str, str]]]:
    """The references (tenant, digest, name) and record ids (record digest -> id, tenant)
    still readable in the old database (a table scan stops at the first damaged page; what
    was read before it is kept). The tables are scanned in primary-key order, so that SQLite
    reads them, not a covering secondary index: a damaged index may be why we are here."""
    refs: list[tuple[str, str, str]] = []
    records: dict[str, tuple[str, str]] = {}
    try:
        db = sqlite3.connect(path)
    except sqlite3.DatabaseError:
        return refs, records
    try:
        for row in _rows(
            db, "SELECT tenant, digest, ref_name FROM refs ORDER BY tenant, digest, ref_name"
        ):
            refs.append((str(row[0]), str(row[1]), str(row[2])))
        for row in _rows(db, "SELECT id, tenant, record_digest FROM snapshots ORDER BY id"):
            records[str(row[2])] = (str(row[0]), str(row[1]))
    finally:
        db.close()
    return refs, records


def _rows(db: sqlite3.Connection, query: str) -> Iterator[tuple[object, ...]]:
    try:
        cursor = db.execute(query)
        while (row := cursor.fetchone()) is not None:
            yield tuple(row)
    except sqlite3.DatabaseError as exc:
        _log.warning("old index partly unreadable", extra={"query": query, "error": str(exc)})


def _first_verified_chunk(blobs: BlobStore, digest: str) -> bytes:
    """Verifies the whole blob (constant memory); -> its first chunk of plaintext."""
    chunks = blobs.open_verified(digest)
    try:
        return next(chunks, b"")
    finally:
        chunks.close()  # type: ignore[attr-defined]


def _record_row(
    blobs: BlobStore, digest: str, signing_key: bytes | None, old: dict[str, tuple[str, str]]
) -> SnapshotRow | None:
    """The index row of the record stored in blob `digest`, or None if it is not a valid
    record for this store (damaged, unsigned under a key, of an unknown format)."""
    raw = blobs.read_bytes(digest)
    try:
        parsed = record_format.parse(
            raw, signing_key=signing_key, max_payload_bytes=blobs.max_blob_bytes
        )
        record_format.verify_payload(parsed, chunk_bytes=blobs.chunk_bytes)
    except (SnapshotCorruptError, SnapshotSignatureError, UnsupportedSnapshotFormatError) as exc:
        _log.warning("blob is not a readable record", extra={"digest": digest, "error": str(exc)})
        return None
    meta = parsed.meta
    old_id, old_tenant = old.get(digest, ("", ""))
    valid = ID_PATTERN.fullmatch(old_id) is not None and old_tenant == meta.tenant
    snapshot_id = old_id if valid else "snap_" + secrets.token_hex(16)
    return SnapshotRow(
        snapshot_id, meta.tenant, meta.kind, meta.engine_fingerprint, meta.source_digest,
        meta.variant, meta.payload_digest, meta.payload_size_bytes, digest, len(raw),
        meta.create_time_ns, parsed.format_version, parsed.signed,
    )  # fmt: skip


def _restore_records(index: BlobIndex, rows: list[SnapshotRow], now_ns: int) -> int:
    """Indexes the records, oldest first so that the newest of a key wins; -> how many."""
    records = RecordIndex(index)
    for row in sorted(rows, key=lambda r: (r.create_time_ns, r.id)):
        index.add_ref(row.tenant, row.record_digest, row.ref_name, now_ns)
        replaced = records.put(row)
        if replaced is not None:
            index.remove_ref(replaced.tenant, replaced.record_digest, replaced.ref_name, now_ns)
    return records.count()
