"""Snapshot records: encode (and sign) a payload into a record blob the tenant references,
index it; find, read (verified before a byte is served), list and delete per tenant.

A record's blob is an ordinary referenced object (`snapshots/<id>`), so quotas, GC and crash
recovery apply to it as to any blob; it is stored raw (`Codec.RAW`), its payload being zstd
already. Another tenant's record is never visible: every lookup is by (tenant, ...), and a
foreign id answers SNAPSHOT_NOT_FOUND like a missing one.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import re
import secrets
import time
from collections.abc import Iterator

from tensorwasm_common.database import Engine
from tensorwasm_common.errors import (
    FingerprintMismatchError,
    InvalidArgumentError,
    InvalidNameError,
    InvalidPageTokenError,
    SnapshotCorruptError,
    SnapshotNotFoundError,
    TooLargeError,
)

from tensorwasm_snapshot import errors, record_format
from tensorwasm_snapshot.blobstore import Codec, validate_digest
from tensorwasm_snapshot.object_store import Clock, SnapshotStore, validate_tenant
from tensorwasm_snapshot.record_format import PayloadEncoder, RecordMeta
from tensorwasm_snapshot.record_index import REF_PREFIX, RecordIndex, SnapshotRow

_log = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"snap_[0-9a-f]{32}")
FINGERPRINT_PATTERN = re.compile(r"[\x21-\x7e]{1,256}")  # printable ASCII, no spaces
MAX_VARIANT_CHARS = 256
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1000
_MAX_TOKEN_CHARS = 512
SHARED_ORPHAN_MIN_AGE_SECONDS = 600.0


def _invalid(field: str, message: str) -> InvalidArgumentError:
    return InvalidArgumentError(message, metadata={"field": field})


def validate_id(snapshot_id: str) -> str:
    """Returns `snapshot_id` if it is `snap_` + 32 lowercase hex digits, else InvalidNameError."""
    if ID_PATTERN.fullmatch(snapshot_id) is None:
        raise InvalidNameError.of("id", snapshot_id, ID_PATTERN.pattern)
    return snapshot_id


def validate_key(kind: int, source_digest: str, variant: str, engine_fingerprint: str) -> None:
    """Raises InvalidArgumentError (or InvalidDigestError) unless the record key is valid."""
    if kind not in record_format.KINDS:
        raise _invalid("kind", f"kind must be one of {sorted(record_format.KINDS)}")
    validate_digest(source_digest)
    if len(variant) > MAX_VARIANT_CHARS or "\0" in variant:
        raise _invalid("variant", f"variant must be at most {MAX_VARIANT_CHARS} characters")
    if FINGERPRINT_PATTERN.fullmatch(engine_fingerprint) is None:
        raise _invalid("engine_fingerprint", "engine_fingerprint must be 1-256 printable ASCII")


class SnapshotRecords:
    """The record API over an open store; safe from many threads."""

    def __init__(
        self,
        store: SnapshotStore,
        *,
        signing_key: bytes | None = None,
        clock: Clock = time.time_ns,
    ) -> None:
        """Serves records of `store`; with `signing_key`, records are signed and only
        correctly signed ones are read."""
        self.store, self.index = store, RecordIndex(store.index)
        self.signing_key, self._clock = signing_key or None, clock

    def creator(
        self,
        tenant: str,
        *,
        kind: int,
        engine_fingerprint: str,
        source_digest: str,
        variant: str,
        payload_size_bytes: int,
    ) -> SnapshotCreator:
        """Starts a record; TooLargeError now if the declared payload is over the cap."""
        validate_tenant(tenant)
        validate_key(kind, source_digest, variant, engine_fingerprint)
        if payload_size_bytes < 0:
            raise _invalid("payload_size_bytes", "payload_size_bytes must be >= 0")
        if payload_size_bytes > self.store.blobs.max_blob_bytes:
            raise TooLargeError.of(self.store.blobs.max_blob_bytes)
        meta = RecordMeta(kind, engine_fingerprint, source_digest, variant, tenant, 0)
        return SnapshotCreator(self, meta, payload_size_bytes)

    def get(self, tenant: str, snapshot_id: str) -> SnapshotRow:
        """The tenant's record; SnapshotNotFoundError for a missing or foreign id."""
        row = self.index.get(validate_tenant(tenant), validate_id(snapshot_id))
        if row is None:
            raise SnapshotNotFoundError(
                f"snapshot {snapshot_id} not found", metadata={"id": snapshot_id}
            )
        return row

    def find(
        self, tenant: str, kind: int, source_digest: str, variant: str, engine_fingerprint: str
    ) -> SnapshotRow:
        """The tenant's record of (kind, source, variant) made by `engine_fingerprint`.

        Raises:
            FingerprintMismatchError: records exist only for other fingerprints.
            SnapshotNotFoundError: there is none.
        """
        validate_tenant(tenant)
        validate_key(kind, source_digest, variant, engine_fingerprint)
        rows = self.index.matching(tenant, kind, source_digest, variant)
        for row in rows:
            if row.engine_fingerprint == engine_fingerprint:
                return row
        if rows:
            raise FingerprintMismatchError.of(engine_fingerprint, rows[0].engine_fingerprint)
        raise SnapshotNotFoundError(
            f"no snapshot of {source_digest} (kind {kind}, variant {variant!r})",
            metadata={"source_digest": source_digest, "variant": variant},
        )

    def open_payload(
        self, tenant: str, snapshot_id: str, expected_engine_fingerprint: str = ""
    ) -> tuple[SnapshotRow, Iterator[bytes]]:
        """Verifies the record whole (blob digest, signature before decompressing, header
        against the index, payload digest), then returns it and its payload in chunks."""
        row = self.get(tenant, snapshot_id)
        if expected_engine_fingerprint and row.engine_fingerprint != expected_engine_fingerprint:
            raise FingerprintMismatchError.of(expected_engine_fingerprint, row.engine_fingerprint)
        try:
            raw = self.store.blobs.read_bytes(row.record_digest)
        except errors.BlobNotFoundError:
            raise SnapshotCorruptError(
                f"snapshot {snapshot_id}'s record blob is missing", metadata={"id": snapshot_id}
            ) from None
        parsed = record_format.parse(
            raw, signing_key=self.signing_key, max_payload_bytes=self.store.blobs.max_blob_bytes
        )
        meta = parsed.meta
        indexed = (row.kind, row.engine_fingerprint, row.source_digest, row.variant, row.tenant)
        if (meta.kind, meta.engine_fingerprint, meta.source_digest, meta.variant, meta.tenant) != (
            indexed
        ) or (meta.payload_digest, meta.payload_size_bytes) != (
            row.payload_digest,
            row.payload_size_bytes,
        ):
            raise SnapshotCorruptError(
                f"snapshot {snapshot_id}'s record does not match its index entry",
                metadata={"id": snapshot_id},
            )
        chunk_bytes = self.store.blobs.chunk_bytes
        record_format.verify_payload(parsed, chunk_bytes=chunk_bytes)
        return row, record_format.iter_payload(parsed, chunk_bytes=chunk_bytes)

    def list(
        self,
        tenant: str,
        *,
        page_size: int = 0,
        page_token: str = "",
        kind: int = 0,
        source_digest: str = "",
    ) -> tuple[list[SnapshotRow], str]:
        """A page of the tenant's records, newest first; -> (rows, next page token or "")."""
        validate_tenant(tenant)
        if page_size < 0:
            raise _invalid("page_size", "page_size must be >= 0")
        if kind and kind not in record_format.KINDS:
            raise _invalid("kind", f"kind must be 0 or one of {sorted(record_format.KINDS)}")
        if source_digest:
            validate_digest(source_digest)
        limit = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        scope = f"{kind}:{source_digest}"
        before = _decode_token(page_token, scope) if page_token else None
        rows = self.index.page(
            tenant, limit=limit + 1, kind=kind, source_digest=source_digest, before=before
        )
        if len(rows) <= limit:
            return rows, ""
        last = rows[limit - 1]
        return rows[:limit], _encode_token(scope, last.create_time_ns, last.id)

    def delete(self, tenant: str, snapshot_id: str) -> SnapshotRow:
        """Deletes the tenant's record and releases its blob; SnapshotNotFoundError if absent."""
        row = self.index.delete(validate_tenant(tenant), validate_id(snapshot_id))
        if row is None:
            raise SnapshotNotFoundError(
                f"snapshot {snapshot_id} not found", metadata={"id": snapshot_id}
            )
        self.store.remove_ref(row.tenant, row.record_digest, row.ref_name)
        return row

    def reconcile(self) -> int:
        """Releases record references whose row is gone (a crash mid-create); -> how many.

        Nothing is released while the index is damaged; a record whose own reference is
        missing marks it damaged (the collector would delete a listed record). On a shared
        (PostgreSQL) index, only references older than `SHARED_ORPHAN_MIN_AGE_SECONDS` are
        released: a younger one may be another replica's create between its reference and
        its row.
        """
        if not self.store.index_problems:
            unreferenced = self.index.unreferenced()
            if unreferenced:
                self.store.mark_index_damaged(
                    [f"snapshot {snapshot_id} has no reference" for snapshot_id in unreferenced]
                )
        if self.store.index_problems:
            return 0
        created_before = None
        if self.store.index.engine is Engine.POSTGRESQL:
            created_before = self._clock() - round(SHARED_ORPHAN_MIN_AGE_SECONDS * 1e9)
        orphans = self.index.orphan_refs(created_before_ns=created_before)
        for tenant, digest, ref_name in orphans:
            self.store.remove_ref(tenant, digest, ref_name)
        if orphans:
            _log.warning("released orphan snapshot references", extra={"count": len(orphans)})
        return len(orphans)

    def _install(self, creator: SnapshotCreator) -> SnapshotRow:
        sealed = creator.encoder.finish(
            dataclasses.replace(creator.meta, create_time_ns=self._clock()),
            signing_key=self.signing_key,
        )
        snapshot_id = "snap_" + secrets.token_hex(16)
        meta = sealed.meta
        with self.store.writer(
            expected_size=sealed.size_bytes,
            tenant=meta.tenant,
            ref_name=REF_PREFIX + snapshot_id,
            codec=Codec.RAW,  # the payload is one zstd frame already: no second pass
        ) as writer:
            for piece in sealed.pieces(self.store.blobs.chunk_bytes):
                writer.write(piece)
            info, _ = writer.commit()
        row = SnapshotRow(
            snapshot_id,
            meta.tenant,
            meta.kind,
            meta.engine_fingerprint,
            meta.source_digest,
            meta.variant,
            meta.payload_digest,
            meta.payload_size_bytes,
            info.digest,
            info.size_bytes,
            meta.create_time_ns,
            record_format.FORMAT_VERSION,
            self.signing_key is not None,
        )
        try:
            replaced = self.index.put(row)
        except BaseException:
            self.store.remove_ref(row.tenant, row.record_digest, row.ref_name)
            raise
        if replaced is not None:
            self.store.remove_ref(replaced.tenant, replaced.record_digest, replaced.ref_name)
        return row


class SnapshotCreator:
    """One record being created: payload chunks in, then `commit()`; used by one thread."""

    def __init__(self, records: SnapshotRecords, meta: RecordMeta, payload_size_bytes: int) -> None:
        """Prefer `SnapshotRecords.creator()`."""
        self.meta, self._records, self._declared = meta, records, payload_size_bytes
        self.encoder = PayloadEncoder(
            level=records.store.blobs.compression_level,
            max_payload_bytes=payload_size_bytes,
            spool_dir=records.store.blobs.spool_dir,
        )

    def write(self, chunk: bytes) -> None:
        """Adds payload bytes; DigestMismatchError past the declared size."""
        try:
            self.encoder.write(chunk)
        except OverflowError:
            self.abort()
            raise errors.DigestMismatchError(
                expected_size=self._declared, actual_size=self.encoder.size_bytes + len(chunk)
            ) from None

    def commit(self) -> SnapshotRow:
        """Encodes, stores, references and indexes the record; -> its row."""
        try:
            if self.encoder.size_bytes != self._declared:
                raise errors.DigestMismatchError(
                    expected_size=self._declared, actual_size=self.encoder.size_bytes
                )
            return self._records._install(self)
        finally:
            self.abort()

    def abort(self) -> None:
        """Discards the payload spooled so far."""
        self.encoder.close()


def _encode_token(scope: str, create_time_ns: int, snapshot_id: str) -> str:
    raw = f"{scope}:{create_time_ns}:{snapshot_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, scope: str) -> tuple[int, str]:
    bad = InvalidPageTokenError(
        "page_token is malformed or belongs to other filters", metadata={"field": "page_token"}
    )
    if len(token) > _MAX_TOKEN_CHARS:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        kind, source_digest, created, snapshot_id = raw.split(":")
        create_time_ns = int(created)
    except (ValueError, UnicodeDecodeError):
        raise bad from None
    if f"{kind}:{source_digest}" != scope or ID_PATTERN.fullmatch(snapshot_id) is None:
        raise bad
    return create_time_ns, snapshot_id
