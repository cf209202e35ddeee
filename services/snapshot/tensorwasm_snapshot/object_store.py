"""The snapshot store: blob files plus their index, with references, tenant quotas and GC.

A tenant is charged the plaintext size of each distinct object it references. An object
with no reference is garbage once untouched (put, or released) for `gc_grace_seconds`, so a
put followed by AddRef is never raced by the collector. Collection and installs of a digest
take the same lock (`BlobStore.remove_if`, `BlobIndex.digest_lock`: across replicas on
PostgreSQL), so a put never returns an object being deleted.

The index is checked when the store opens (`BlobIndex.problems`); while it is damaged the
store serves and stores as usual but refuses to collect garbage (IndexDamagedError), since a
lost reference would make a live object collectable. `index_repair.rebuild_index` mends it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tensorwasm_common.database import DatabaseStartError, SchemaTooNewError, sqlite_url
from tensorwasm_common.errors import BlobIntegrityError, InvalidNameError
from tensorwasm_common.tenants import TENANT_PATTERN

from tensorwasm_snapshot import errors
from tensorwasm_snapshot.backends import BlobBackend
from tensorwasm_snapshot.blob_index import BlobIndex, ObjectRecord, Totals, Usage
from tensorwasm_snapshot.blobstore import BlobInfo, BlobStore, BlobWriter, Codec, validate_digest

_log = logging.getLogger(__name__)

INDEX_FILE = "index.sqlite3"
REF_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.~:/@+=-]{0,255}")

Clock = Callable[[], int]  # nanoseconds since the epoch, like time.time_ns


def validate_tenant(tenant: str) -> str:
    """Returns `tenant` if it is a valid tenant id, else raises InvalidNameError."""
    if TENANT_PATTERN.fullmatch(tenant) is None:
        raise InvalidNameError.of("tenant", tenant, TENANT_PATTERN.pattern)
    return tenant


def validate_ref_name(ref_name: str) -> str:
    """Returns `ref_name` if it is a valid reference name, else raises InvalidNameError."""
    if REF_NAME_PATTERN.fullmatch(ref_name) is None:
        raise InvalidNameError.of("ref_name", ref_name, REF_NAME_PATTERN.pattern)
    return ref_name


@dataclasses.dataclass(frozen=True)
class GcReport:
    """What one collection deleted."""

    deleted_count: int = 0
    deleted_size_bytes: int = 0
    deleted_stored_size_bytes: int = 0


@dataclasses.dataclass(frozen=True)
class ReconcileReport:
    """What opening the store repaired in the index."""

    indexed: int = 0  # files on disk the index lacked, verified and added
    dropped: int = 0  # index rows whose file was gone, removed (with their references)
    damaged: int = 0  # unindexed files that failed verification, left alone


class SnapshotStore:
    """Puts, gets, references, usage and garbage collection; safe from many threads."""

    def __init__(
        self,
        blobs: BlobStore,
        index: BlobIndex,
        *,
        gc_grace_seconds: float = 3600.0,
        tenant_quota_bytes: int = 0,
        clock: Clock = time.time_ns,
    ) -> None:
        """Wraps an open blob store and index; prefer `SnapshotStore.open`."""
        if gc_grace_seconds < 0 or tenant_quota_bytes < 0:
            raise ValueError("need gc_grace_seconds >= 0 and tenant_quota_bytes >= 0")
        self.blobs, self.index, self._clock = blobs, index, clock
        blobs.digest_lock = index.digest_lock  # shared with other replicas of the index
        self.gc_grace_ns = round(gc_grace_seconds * 1e9)
        self.tenant_quota_bytes = tenant_quota_bytes
        # What the index check found when the store opened; empty while the index is sound.
        self.index_problems: list[str] = []

    @classmethod
    def open(
        cls,
        root: Path,
        *,
        backend: BlobBackend | None = None,
        index_url: str | None = None,
        compression_level: int = 3,
        max_blob_bytes: int = 256 << 20,
        chunk_bytes: int = 1 << 20,
        gc_grace_seconds: float = 3600.0,
        tenant_quota_bytes: int = 0,
        clock: Clock = time.time_ns,
    ) -> SnapshotStore:
        """Opens the store whose working directory is `root` and whose blob files are in
        `backend` (default: a local directory under `root`), indexed at `index_url` (default:
        an SQLite file in `root`): deletes temp files, checks the index, then (if it is sound)
        reconciles index and blobs.

        Raises:
            IndexDamagedError: the SQLite index file is not a database SQLite can open.
            DatabaseStartError: a PostgreSQL index cannot be reached, or the index was
                migrated by a newer release (SchemaTooNewError); the message names the setting.
        """
        blobs = BlobStore(
            root,
            backend=backend,
            compression_level=compression_level,
            max_blob_bytes=max_blob_bytes,
            chunk_bytes=chunk_bytes,
        )
        index_path = blobs.root / INDEX_FILE
        if index_url is None:
            index_url = sqlite_url(index_path)
        # A truncated (empty) index opens as a new database: every reference would be lost.
        # A missing one is a store from before the index, whose files are indexed below.
        index_lost = (
            index_url == sqlite_url(index_path)
            and index_path.is_file()
            and index_path.stat().st_size == 0
        )
        try:
            index = BlobIndex.open(index_url)
        except SchemaTooNewError:
            raise
        except (sqlite3.DatabaseError, DatabaseStartError) as exc:
            if not index_url.startswith("sqlite:"):
                raise
            raise errors.IndexDamagedError(f"{index_url} cannot be opened: {exc}") from exc
        try:
            store = cls(
                blobs,
                index,
                gc_grace_seconds=gc_grace_seconds,
                tenant_quota_bytes=tenant_quota_bytes,
                clock=clock,
            )
            problems = index.problems()
            if index_lost and next(blobs.digests(), None) is not None:
                problems.append(f"{index_path} is empty but blob files exist")
            if problems:
                store.mark_index_damaged(problems)
                return store  # reconciling against a damaged index could drop references
            report = store.reconcile()
        except BaseException:
            index.close()
            raise
        if report != ReconcileReport():
            _log.warning("index reconciled with the blob files", extra=dataclasses.asdict(report))
        return store

    def close(self) -> None:
        """Closes the index."""
        self.index.close()

    def check(self) -> None:
        """Health check: raises unless files can be created and the index answers."""
        self.blobs.check()
        self.index.check()

    def mark_index_damaged(self, problems: list[str]) -> None:
        """Turns garbage collection off for as long as this store is open."""
        self.index_problems.extend(problems)
        _log.error(
            "the index is damaged: garbage collection is off until it is rebuilt"
            " (stop the store; python -m tensorwasm_snapshot rebuild-index --data-dir %s)",
            self.blobs.root,
            extra={"problems": problems[:5]},
        )

    # --- blobs ---

    def writer(
        self,
        *,
        expected_digest: str | None = None,
        expected_size: int | None = None,
        tenant: str | None = None,
        ref_name: str | None = None,
        codec: Codec = Codec.ZSTD,
    ) -> ObjectWriter:
        """Starts an upload; with `ref_name`, `tenant`'s reference is added as it commits.

        `codec` is how a newly installed blob is kept at rest (`Codec.RAW` for bytes that are
        compressed already, such as snapshot records).

        Raises TooLargeError or TenantQuotaExceededError before anything is written when the
        declared size is over the cap or the tenant's remaining quota.
        """
        self.blobs.check_upload(expected_digest, expected_size)
        budget: int | None = None
        if ref_name is not None:
            tenant = validate_tenant(tenant or "")
            validate_ref_name(ref_name)
            budget = self._budget(tenant, expected_digest, expected_size or 0)

        def on_install(info: BlobInfo) -> None:  # under the digest's lock: GC waits
            now = self._clock()
            self.index.record(info, now)
            if ref_name is not None and tenant is not None:
                self.index.add_ref(
                    tenant, info.digest, ref_name, now, quota_bytes=self.tenant_quota_bytes
                )

        inner = self.blobs.writer(
            expected_digest=expected_digest,
            expected_size=expected_size,
            on_install=on_install,
            codec=codec,
        )
        return ObjectWriter(inner, budget, tenant or "", self.tenant_quota_bytes)

    def put_bytes(
        self, data: bytes, *, tenant: str | None = None, ref_name: str | None = None
    ) -> tuple[BlobInfo, bool]:
        """Stores `data` (and references it); -> (info, deduplicated)."""
        with self.writer(expected_size=len(data), tenant=tenant, ref_name=ref_name) as writer:
            writer.write(data)
            return writer.commit()

    def stat(self, digest: str) -> BlobInfo:
        """Describes a stored blob from its header."""
        return self.blobs.stat(digest)

    def open_verified(self, digest: str) -> Iterator[bytes]:
        """The blob's plaintext in bounded chunks, verified first (see BlobStore)."""
        return self.blobs.open_verified(digest)

    # --- references and usage ---

    def add_ref(self, tenant: str, digest: str, ref_name: str) -> tuple[BlobInfo, bool]:
        """Adds `tenant`'s reference to a stored object; -> (info, False if it existed)."""
        validate_tenant(tenant)
        validate_digest(digest)
        validate_ref_name(ref_name)
        record, created = self.index.add_ref(
            tenant, digest, ref_name, self._clock(), quota_bytes=self.tenant_quota_bytes
        )
        return record.info, created

    def remove_ref(self, tenant: str, digest: str, ref_name: str) -> bool:
        """Removes `tenant`'s reference; False if it had none of that name."""
        validate_tenant(tenant)
        validate_digest(digest)
        validate_ref_name(ref_name)
        return self.index.remove_ref(tenant, digest, ref_name, self._clock())

    def usage(self, tenant: str) -> Usage:
        """What `tenant` is charged."""
        return self.index.usage(validate_tenant(tenant))

    def totals(self) -> Totals:
        """What the store holds, all tenants together."""
        return self.index.totals()

    # --- garbage collection and recovery ---

    def collect_garbage(self) -> GcReport:
        """Deletes every object with no reference that is untouched for the grace period.

        Raises:
            IndexDamagedError: the index failed its check when the store opened.
        """
        if self.index_problems:
            raise errors.IndexDamagedError(self.index_problems[0])
        cutoff = self._clock() - self.gc_grace_ns
        deleted: list[ObjectRecord] = []
        for digest in self.index.collectable(cutoff):

            def forget(digest: str = digest) -> bool:
                record = self.index.forget_if_collectable(digest, cutoff)
                if record is not None:
                    deleted.append(record)
                return record is not None

            self.blobs.remove_if(digest, forget)
        if deleted:
            _log.info("garbage collected", extra={"deleted_count": len(deleted)})
        return GcReport(
            len(deleted),
            sum(r.size_bytes for r in deleted),
            sum(r.stored_size_bytes for r in deleted),
        )

    def reconcile(self) -> ReconcileReport:
        """Makes the index match the files; run before serving (nothing else may write).

        Rows whose file is gone are dropped with their references; files the index lacks
        (a crash between install and index write) are verified, then indexed unreferenced
        and touched now, so they are collected after the grace period unless referenced.
        """
        # The index is read before the blobs are listed: a row is written after its blob is
        # installed, so a put racing this (another replica's) is never taken for a lost blob.
        indexed = self.index.digests()
        on_disk = set(self.blobs.digests())
        dropped = sorted(indexed - on_disk)
        for digest in dropped:
            lost = self.index.forget(digest)
            _log.error("indexed blob file missing", extra={"digest": digest, "refs_lost": lost})
        added = damaged = 0
        for digest in sorted(on_disk - indexed):
            # Under the digest's lock: another replica's collector deletes the row, then the
            # blob, under it; so the blob is either gone here or still kept after this row.
            with self.index.digest_lock(digest):
                try:
                    info = self.blobs.verify(digest)
                    modified_ns = self.blobs.backend.modified_ns(digest)
                except errors.BlobNotFoundError:
                    continue  # collected since it was listed
                except BlobIntegrityError:
                    damaged += 1
                    _log.warning("unindexed blob failed verification", extra={"digest": digest})
                    continue
                self.index.record(info, self._clock(), create_time_ns=modified_ns)
            added += 1
        return ReconcileReport(added, len(dropped), damaged)

    def _budget(self, tenant: str, expected_digest: str | None, expected_size: int) -> int | None:
        """The most bytes an upload referenced by `tenant` may carry; None is unlimited."""
        if self.tenant_quota_bytes == 0:
            return None
        if expected_digest is not None and self.index.holds(tenant, expected_digest):
            return None  # already charged
        used = self.index.usage(tenant).size_bytes
        if used + expected_size > self.tenant_quota_bytes:
            raise errors.TenantQuotaExceededError(
                tenant, self.tenant_quota_bytes, used, expected_size
            )
        return self.tenant_quota_bytes - used


class ObjectWriter:
    """A `BlobWriter` that also stops at the tenant's remaining quota, if it has one."""

    def __init__(
        self, inner: BlobWriter, budget_bytes: int | None, tenant: str, quota_bytes: int
    ) -> None:
        """Wraps `inner`; prefer `SnapshotStore.writer()`."""
        self._inner, self._budget, self._size = inner, budget_bytes, 0
        self._tenant, self._quota = tenant, quota_bytes

    def write(self, chunk: bytes) -> None:
        """Hashes and compresses more plaintext; aborts past the size cap or the quota."""
        if self._budget is not None and self._size + len(chunk) > self._budget:
            self._inner.abort()
            used = self._quota - self._budget
            raise errors.TenantQuotaExceededError(
                self._tenant, self._quota, used, self._size + len(chunk)
            )
        self._inner.write(chunk)
        self._size += len(chunk)

    def commit(self) -> tuple[BlobInfo, bool]:
        """Installs the blob durably, indexes it, adds the reference; -> (info, deduplicated)."""
        return self._inner.commit()

    def abort(self) -> None:
        """Discards the upload; a no-op once committed or aborted."""
        self._inner.abort()

    def __enter__(self) -> ObjectWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()
