"""The store's index: objects, references, usage, GC candidates; SQLite or PostgreSQL.

The `snapshots` table (records, see `record_index`) lives in the same database; the schema
is in `index_schema` (versioned migrations, applied when the index opens). SQLite (a file in
the data directory) is the default; on PostgreSQL several store replicas share one index.

The blob files are the truth about bytes; the index is the truth about who holds them. An
object row is written after its blob is installed and deleted before its blob is, so after
a crash the index can only lag the blobs, which `SnapshotStore.reconcile` repairs.

Children are deleted explicitly (references, records) before their object, so the same
statements hold whether or not the engine enforces the foreign keys. On PostgreSQL, a
reference and the collection of its object lock the object's row (`FOR UPDATE`), and
`digest_lock` is an advisory lock, so replicas never collect what another just put.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tensorwasm_common.database import (
    Database,
    Engine,
    Session,
    migrate,
    parse_database_url,
    sqlite_url,
)

from tensorwasm_snapshot import errors
from tensorwasm_snapshot.blobstore import BlobInfo
from tensorwasm_snapshot.index_schema import COMPONENT, MIGRATIONS

DATABASE_URL_SETTING = "TENSORWASM_SNAPSHOT_DATABASE_URL"
POOL_SIZE = 16  # PostgreSQL connections per store process
# pg_advisory_xact_lock(class, key) class of the per-digest locks: "TW" in ASCII.
_DIGEST_LOCK_CLASS = 0x5457
_LOCAL_LOCKS = tuple(threading.Lock() for _ in range(256))  # one per two-hex digest prefix
# Each object's read for an update (the second locks its row on PostgreSQL).
_GET = (
    "SELECT digest, size_bytes, stored_size_bytes, create_time_ns, touch_time_ns"
    " FROM objects WHERE digest = ?"
)
_GET_FOR_UPDATE = _GET + " FOR UPDATE"


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


@dataclass(frozen=True)
class Totals:
    """What the store holds, all tenants together."""

    object_count: int
    size_bytes: int  # plaintext
    stored_size_bytes: int  # at rest
    ref_count: int


class BlobIndex:
    """Object and reference rows; every write is committed durably before it returns."""

    def __init__(self, database: Database) -> None:
        """Uses an open database, applying the index's pending migrations.

        Raises:
            SchemaTooNewError: the database was migrated by a newer release.
            DatabaseUnavailableError: it stopped answering.
        """
        self.database = database
        self.engine = database.engine
        migrate(database, COMPONENT, MIGRATIONS)

    @classmethod
    def open(cls, url: str) -> BlobIndex:
        """Opens the index at a `sqlite:///PATH` or `postgresql://...` URL.

        Raises:
            DatabaseUrlError, DatabaseStartError: the URL is malformed or its database cannot
                be opened (the message names TENSORWASM_SNAPSHOT_DATABASE_URL).
        """
        parsed = parse_database_url(url, DATABASE_URL_SETTING)
        # An install holds a connection for its digest lock while it records the object.
        database = Database(parsed, setting=DATABASE_URL_SETTING, pool_size=POOL_SIZE)
        try:
            return cls(database)
        except BaseException:
            database.close()
            raise

    @classmethod
    def open_file(cls, path: Path) -> BlobIndex:
        """Opens (creating if needed) an SQLite index file."""
        return cls.open(sqlite_url(path))

    def close(self) -> None:
        """Closes the database."""
        self.database.close()

    def check(self) -> None:
        """Health check: raises unless the database answers."""
        with self.reading() as db:
            db.execute("SELECT 1 FROM objects LIMIT 1")

    def problems(self, *, limit: int = 20) -> list[str]:
        """What is wrong with the database (empty: nothing found), up to `limit` lines.

        On SQLite, its full integrity check first (pages, and every index against its table:
        a damaged `refs_by_digest` entry hides a reference from the collector); then, on both
        engines, references and records whose object has no row (a damaged digest, which
        frees the real object). Reads every page: run it when the store opens, not per request.
        """
        try:
            with self.reading() as db:
                if self.engine is Engine.SQLITE:
                    found = [
                        str(row[0])
                        for row in db.execute(f"PRAGMA integrity_check({int(limit)})").rows
                    ]
                    if found != ["ok"]:
                        return found
                dangling = [
                    str(table)
                    for query in (
                        "SELECT 'refs' FROM refs WHERE NOT EXISTS"
                        " (SELECT 1 FROM objects WHERE objects.digest = refs.digest) LIMIT ?",
                        "SELECT 'snapshots' FROM snapshots WHERE NOT EXISTS (SELECT 1 FROM"
                        " objects WHERE objects.digest = snapshots.record_digest) LIMIT ?",
                    )
                    for (table,) in db.execute(query, (limit,)).rows
                ]
        except Exception as exc:  # a damaged SQLite file fails any statement
            if self.engine is Engine.POSTGRESQL:
                raise
            return [f"sqlite: {exc}"]
        return [f"a {table} row names an object that is not indexed" for table in dangling[:limit]]

    @contextlib.contextmanager
    def reading(self) -> Iterator[Session]:
        """A transaction for reads (of this index's tables and those kept beside it)."""
        with self.database.transaction() as session:
            yield session

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        """A transaction, committed durably on exit, rolled back on an error."""
        with self.database.transaction() as session:
            yield session

    @contextlib.contextmanager
    def digest_lock(self, digest: str) -> Iterator[None]:
        """Held by an install and by the collection of `digest`'s blob: in this process (a
        lock per digest prefix) and, on PostgreSQL, across replicas (an advisory lock)."""
        with _LOCAL_LOCKS[int(digest[:2], 16)]:
            if self.engine is not Engine.POSTGRESQL:
                yield
                return
            key = int(digest[:8], 16) - (1 << 31)  # a signed 32-bit key
            with self.database.transaction() as session:
                session.execute("SELECT pg_advisory_xact_lock(?, ?)", (_DIGEST_LOCK_CLASS, key))
                yield

    def record(self, info: BlobInfo, now_ns: int, *, create_time_ns: int | None = None) -> None:
        """Adds an object, or touches it (a deduplicated put restarts its grace period)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO objects VALUES (?, ?, ?, ?, ?) ON CONFLICT (digest) DO UPDATE SET"
                " size_bytes = excluded.size_bytes,"
                " stored_size_bytes = excluded.stored_size_bytes,"
                # the newer of the two touch times, in SQL both engines speak
                " touch_time_ns = CASE WHEN ? > objects.touch_time_ns THEN ?"
                " ELSE objects.touch_time_ns END",
                (
                    info.digest,
                    info.size_bytes,
                    info.stored_size_bytes,
                    now_ns if create_time_ns is None else create_time_ns,
                    now_ns,
                    now_ns,
                    now_ns,
                ),
            )

    def get(self, digest: str) -> ObjectRecord | None:
        """The object's row, or None."""
        with self.reading() as db:
            return _get(db, digest)

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
            record = _get(db, digest, for_update=True)
            if record is None:
                raise errors.BlobNotFoundError(digest)
            exists = db.execute(
                "SELECT 1 FROM refs WHERE tenant = ? AND digest = ? AND ref_name = ?",
                (tenant, digest, ref_name),
            ).one()
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
            removed = db.execute(
                "DELETE FROM refs WHERE tenant = ? AND digest = ? AND ref_name = ?",
                (tenant, digest, ref_name),
            )
            if removed.rowcount == 0:
                return False
            db.execute(
                "UPDATE objects SET touch_time_ns = CASE WHEN ? > objects.touch_time_ns THEN ?"
                " ELSE objects.touch_time_ns END WHERE digest = ?"
                " AND NOT EXISTS (SELECT 1 FROM refs WHERE refs.digest = objects.digest)",
                (now_ns, now_ns, digest),
            )
        return True

    def holds(self, tenant: str, digest: str) -> bool:
        """True when the tenant has any reference to the object."""
        with self.reading() as db:
            return _holds(db, tenant, digest)

    def usage(self, tenant: str) -> Usage:
        """The tenant's charged bytes and counts."""
        with self.reading() as db:
            return _usage(db, tenant)

    def totals(self) -> Totals:
        """The objects held (count, plaintext and at-rest bytes) and the references."""
        with self.reading() as db:
            found = db.execute(
                "SELECT count(*), coalesce(sum(size_bytes), 0),"
                " coalesce(sum(stored_size_bytes), 0) FROM objects"
            ).one()
            counted = db.execute("SELECT count(*) FROM refs").one()
        assert found is not None and counted is not None
        return Totals(int(found[0]), int(found[1]), int(found[2]), int(counted[0]))

    def collectable(self, cutoff_ns: int) -> list[str]:
        """Digests with no reference, untouched since `cutoff_ns` or earlier."""
        with self.reading() as db:
            rows = db.execute(
                "SELECT digest FROM objects WHERE touch_time_ns <= ?"
                " AND NOT EXISTS (SELECT 1 FROM refs WHERE refs.digest = objects.digest)"
                " ORDER BY digest",
                (cutoff_ns,),
            ).rows
        return [str(digest) for (digest,) in rows]

    def forget_if_collectable(self, digest: str, cutoff_ns: int) -> ObjectRecord | None:
        """Deletes the object's row if it is still collectable; the deleted row, or None."""
        with self.transaction() as db:
            record = _get(db, digest, for_update=True)
            if record is None or record.touch_time_ns > cutoff_ns:
                return None
            deleted = db.execute(
                "DELETE FROM objects WHERE digest = ?"
                " AND NOT EXISTS (SELECT 1 FROM refs WHERE refs.digest = objects.digest)",
                (digest,),
            )
            return record if deleted.rowcount else None

    def digests(self) -> set[str]:
        """Every indexed digest."""
        with self.reading() as db:
            return {str(digest) for (digest,) in db.execute("SELECT digest FROM objects").rows}

    def forget(self, digest: str) -> int:
        """Deletes an object's row, its references and records (its blob is gone);
        -> references lost."""
        with self.transaction() as db:
            refs = db.execute("DELETE FROM refs WHERE digest = ?", (digest,)).rowcount
            db.execute("DELETE FROM snapshots WHERE record_digest = ?", (digest,))
            db.execute("DELETE FROM objects WHERE digest = ?", (digest,))
        return int(refs)


def _get(db: Session, digest: str, *, for_update: bool = False) -> ObjectRecord | None:
    locking = for_update and db.engine is Engine.POSTGRESQL
    row = db.execute(_GET_FOR_UPDATE if locking else _GET, (digest,)).one()
    return None if row is None else ObjectRecord(str(row[0]), *(int(v) for v in row[1:]))


def _holds(db: Session, tenant: str, digest: str) -> bool:
    row = db.execute(
        "SELECT 1 FROM refs WHERE tenant = ? AND digest = ? LIMIT 1", (tenant, digest)
    ).one()
    return row is not None


def _usage(db: Session, tenant: str) -> Usage:
    found = db.execute(
        "SELECT count(*), coalesce(sum(size_bytes), 0) FROM objects"
        " WHERE digest IN (SELECT digest FROM refs WHERE tenant = ?)",
        (tenant,),
    ).one()
    counted = db.execute("SELECT count(*) FROM refs WHERE tenant = ?", (tenant,)).one()
    assert found is not None and counted is not None
    return Usage(tenant, int(found[1]), int(found[0]), int(counted[0]))
