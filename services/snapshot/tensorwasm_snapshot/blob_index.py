"""The store's index in SQLite (WAL, synchronous=FULL): objects, references, usage, GC candidates.

The `snapshots` table (records, see `record_index`) lives in the same database.

The blob files are the truth about bytes; the index is the truth about who holds them. An
object row is written after its file is installed and deleted before its file is, so after
a crash the index can only lag the files, which `SnapshotStore.reconcile` repairs.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tensorwasm_snapshot import errors
from tensorwasm_snapshot.blobstore import BlobInfo

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    digest TEXT PRIMARY KEY,
    size_bytes INTEGER NOT NULL,
    stored_size_bytes INTEGER NOT NULL,
    create_time_ns INTEGER NOT NULL,
    touch_time_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS refs (
    tenant TEXT NOT NULL,
    digest TEXT NOT NULL REFERENCES objects (digest) ON DELETE CASCADE,
    ref_name TEXT NOT NULL,
    create_time_ns INTEGER NOT NULL,
    PRIMARY KEY (tenant, digest, ref_name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refs_by_digest ON refs (digest);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    kind INTEGER NOT NULL,
    engine_fingerprint TEXT NOT NULL,
    source_digest TEXT NOT NULL,
    variant TEXT NOT NULL,
    payload_digest TEXT NOT NULL,
    payload_size_bytes INTEGER NOT NULL,
    record_digest TEXT NOT NULL REFERENCES objects (digest) ON DELETE CASCADE,
    record_size_bytes INTEGER NOT NULL,
    create_time_ns INTEGER NOT NULL,
    format_version INTEGER NOT NULL,
    signed INTEGER NOT NULL,
    UNIQUE (tenant, kind, source_digest, variant, engine_fingerprint)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS snapshots_by_time ON snapshots (tenant, create_time_ns, id);
CREATE INDEX IF NOT EXISTS snapshots_by_record ON snapshots (record_digest);
PRAGMA user_version = 2;
"""


@dataclass(frozen=True)
class ObjectRecord:
    """An indexed object; `touch_time_ns` is its last put or release (the grace runs from it)."""

    digest: str
    size_bytes: int
    stored_size_bytes: int
    create_time_ns: int
    touch_time_ns: int

    @property
    def info(self) -> BlobInfo:
        """The object as the blob store describes it."""
        return BlobInfo(self.digest, self.size_bytes, self.stored_size_bytes)


@dataclass(frozen=True)
class Usage:
    """What a tenant is charged: the plaintext bytes of the distinct objects it references."""

    tenant: str
    size_bytes: int
    object_count: int
    ref_count: int


class BlobIndex:
    """Object and reference rows; every write is committed durably before it returns."""

    def __init__(self, path: Path) -> None:
        """Opens (creating if needed) the index database at `path`."""
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Closes the database."""
        with self._lock:
            self._db.close()

    def check(self) -> None:
        """Health check: raises sqlite3.Error unless the database answers."""
        with self._lock:
            self._db.execute("SELECT 1 FROM objects LIMIT 1").fetchall()

    def problems(self, *, limit: int = 20) -> list[str]:
        """What is wrong with the database (empty: nothing found), up to `limit` lines.

        SQLite's full integrity check (pages, and every index against its table: a damaged
        `refs_by_digest` entry hides a reference from the collector), then references and
        records whose object has no row (a damaged digest, which frees the real object).
        Reads every page: run it when the store opens, not per request.
        """
        try:
            with self._lock:
                found = [
                    str(row[0]) for row in self._db.execute(f"PRAGMA integrity_check({int(limit)})")
                ]
                if found != ["ok"]:
                    return found
                dangling = self._db.execute("PRAGMA foreign_key_check").fetchmany(limit)
        except sqlite3.DatabaseError as exc:
            return [f"sqlite: {exc}"]
        return [f"a {table} row names an object that is not indexed" for table, *_ in dangling]

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the index's lock, for reads of tables kept beside it."""
        with self._lock:
            yield self._db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate transaction, committed durably on exit, rolled back on an error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def record(self, info: BlobInfo, now_ns: int, *, create_time_ns: int | None = None) -> None:
        """Adds an object, or touches it (a deduplicated put restarts its grace period)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO objects VALUES (?, ?, ?, ?, ?) ON CONFLICT (digest) DO UPDATE SET"
                " size_bytes = excluded.size_bytes,"
                " stored_size_bytes = excluded.stored_size_bytes,"
                " touch_time_ns = max(touch_time_ns, excluded.touch_time_ns)",
                (
                    info.digest,
                    info.size_bytes,
                    info.stored_size_bytes,
                    now_ns if create_time_ns is None else create_time_ns,
                    now_ns,
                ),
            )

    def get(self, digest: str) -> ObjectRecord | None:
        """The object's row, or None."""
        with self._lock:
            return _get(self._db, digest)

    def add_ref(
        self, tenant: str, digest: str, ref_name: str, now_ns: int, *, quota_bytes: int = 0
    ) -> tuple[ObjectRecord, bool]:
        """Adds a reference; -> (object, False if it existed). Charges the object's size unless
        the tenant references it already; `quota_bytes` 0 is unlimited.

        Raises:
            BlobNotFoundError: the object is not indexed.
            TenantQuotaExceededError: the charge would pass the quota; nothing was added.
        """
        with self.transaction() as db:
            record = _get(db, digest)
            if record is None:
                raise errors.BlobNotFoundError(digest)
            exists = db.execute(
                "SELECT 1 FROM refs WHERE tenant = ? AND digest = ? AND ref_name = ?",
                (tenant, digest, ref_name),
            ).fetchone()
            if exists is not None:
                return record, False
            if quota_bytes > 0 and not _holds(db, tenant, digest):
                usage = _usage(db, tenant)
                if usage.size_bytes + record.size_bytes > quota_bytes:
                    raise errors.TenantQuotaExceededError(
                        tenant, quota_bytes, usage.size_bytes, record.size_bytes
                    )
            db.execute("INSERT INTO refs VALUES (?, ?, ?, ?)", (tenant, digest, ref_name, now_ns))
        return record, True

    def remove_ref(self, tenant: str, digest: str, ref_name: str, now_ns: int) -> bool:
        """Removes a reference; the last one's removal touches the object. False if absent."""
        with self.transaction() as db:
            cursor = db.execute(
                "DELETE FROM refs WHERE tenant = ? AND digest = ? AND ref_name = ?",
                (tenant, digest, ref_name),
            )
            if cursor.rowcount == 0:
                return False
            db.execute(
                "UPDATE objects SET touch_time_ns = max(touch_time_ns, ?) WHERE digest = ?"
                " AND NOT EXISTS (SELECT 1 FROM refs WHERE refs.digest = objects.digest)",
                (now_ns, digest),
            )
        return True

    def holds(self, tenant: str, digest: str) -> bool:
        """True when the tenant has any reference to the object."""
        with self._lock:
            return _holds(self._db, tenant, digest)

    def usage(self, tenant: str) -> Usage:
        """The tenant's charged bytes and counts."""
        with self._lock:
            return _usage(self._db, tenant)

    def collectable(self, cutoff_ns: int) -> list[str]:
        """Digests with no reference, untouched since `cutoff_ns` or earlier."""
        with self._lock:
            rows = self._db.execute(
                "SELECT digest FROM objects WHERE touch_time_ns <= ?"
                " AND NOT EXISTS (SELECT 1 FROM refs WHERE refs.digest = objects.digest)"
                " ORDER BY digest",
                (cutoff_ns,),
            ).fetchall()
        return [digest for (digest,) in rows]

    def forget_if_collectable(self, digest: str, cutoff_ns: int) -> ObjectRecord | None:
        """Deletes the object's row if it is still collectable; the deleted row, or None."""
        with self.transaction() as db:
            record = _get(db, digest)
            if record is None or record.touch_time_ns > cutoff_ns:
                return None
            cursor = db.execute(
                "DELETE FROM objects WHERE digest = ?"
                " AND NOT EXISTS (SELECT 1 FROM refs WHERE refs.digest = objects.digest)",
                (digest,),
            )
            return record if cursor.rowcount else None

    def digests(self) -> set[str]:
        """Every indexed digest."""
        with self._lock:
            return {digest for (digest,) in self._db.execute("SELECT digest FROM objects")}

    def forget(self, digest: str) -> int:
        """Deletes an object's row and its references (its file is gone); -> references lost."""
        with self.transaction() as db:
            (refs,) = db.execute("SELECT count(*) FROM refs WHERE digest = ?", (digest,)).fetchone()
            db.execute("DELETE FROM objects WHERE digest = ?", (digest,))
        return int(refs)


def _get(db: sqlite3.Connection, digest: str) -> ObjectRecord | None:
    row = db.execute(
        "SELECT digest, size_bytes, stored_size_bytes, create_time_ns, touch_time_ns"
        " FROM objects WHERE digest = ?",
        (digest,),
    ).fetchone()
    return None if row is None else ObjectRecord(*row)


def _holds(db: sqlite3.Connection, tenant: str, digest: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM refs WHERE tenant = ? AND digest = ? LIMIT 1", (tenant, digest)
    ).fetchone()
    return row is not None


def _usage(db: sqlite3.Connection, tenant: str) -> Usage:
    objects, size = db.execute(
        "SELECT count(*), coalesce(sum(size_bytes), 0) FROM objects"
        " WHERE digest IN (SELECT digest FROM refs WHERE tenant = ?)",
        (tenant,),
    ).fetchone()
    (refs,) = db.execute("SELECT count(*) FROM refs WHERE tenant = ?", (tenant,)).fetchone()
    return Usage(tenant, int(size), int(objects), int(refs))
