"""Snapshot records in and out of the store as files: export a record's file as stored, and
import one a tenant exported, checked whole before anything is stored.

An import is a new record of the calling tenant, re-encoded (and signed) by this store, so a
file never becomes a blob without passing the same checks a read makes: declared size,
signature before decompressing, header, kind, tenant, payload digest.
"""

from __future__ import annotations

import secrets
import tempfile

from tensorwasm_common.errors import (
    InvalidArgumentError,
    SnapshotCorruptError,
    SnapshotFunctionMismatchError,
    SnapshotKindMismatchError,
    SnapshotSignatureError,
    SnapshotTooLargeError,
    SnapshotTruncatedError,
)

from tensorwasm_snapshot import errors, record_format
from tensorwasm_snapshot.object_store import validate_tenant
from tensorwasm_snapshot.record_index import SnapshotRow
from tensorwasm_snapshot.records import SnapshotRecords

__all__ = ["RecordImport", "RecordTransfer"]

_SPOOL_BYTES = 8 << 20
INSTANCE_STATE = 4  # = SnapshotKind.SNAPSHOT_KIND_INSTANCE_STATE


def imported_variant(kind: int, variant: str) -> str:
    """The variant an imported record is stored under: an instance state keeps its
    `{function}/{instance}/` prefix with a fresh label, so it never replaces the record
    it was exported from; other kinds keep theirs."""
    if kind != INSTANCE_STATE:
        return variant
    function_id, _, rest = variant.partition("/")
    instance_id = rest.partition("/")[0]
    return f"{function_id}/{instance_id}/import-{secrets.token_hex(8)}"


class RecordTransfer:
    """Exports and imports record files of an open store; safe from many threads."""

    def __init__(self, records: SnapshotRecords) -> None:
        self._records = records

    def export(self, tenant: str, snapshot_id: str) -> tuple[SnapshotRow, bytes]:
        """The tenant's record and its file, verified whole (blob digest) by the read."""
        row = self._records.get(tenant, snapshot_id)
        try:
            raw = self._records.store.blobs.read_bytes(row.record_digest)
        except errors.BlobNotFoundError:
            raise SnapshotCorruptError(
                f"snapshot {snapshot_id}'s record blob is missing", metadata={"id": snapshot_id}
            ) from None
        return row, raw

    def importer(
        self,
        tenant: str,
        *,
        size_bytes: int,
        expected_kind: int = 0,
        max_restore_bytes: int = 0,
        require_signature: bool = False,
    ) -> RecordImport:
        """Starts an import; SnapshotTooLargeError now if the declared file is over the cap."""
        validate_tenant(tenant)
        cap = self._records.store.blobs.max_blob_bytes
        limit = min(max_restore_bytes, cap) if max_restore_bytes > 0 else cap
        if size_bytes <= 0:
            raise InvalidArgumentError(
                "size_bytes must be > 0", metadata={"field": "header.size_bytes"}
            )
        if size_bytes > limit:
            raise SnapshotTooLargeError.of(size_bytes, limit, "snapshot file")
        return RecordImport(
            self._records, tenant, size_bytes=size_bytes, limit_bytes=limit,
            expected_kind=expected_kind, require_signature=require_signature,
        )  # fmt: skip


class RecordImport:
    """One record file being imported: chunks in, then `commit()`; used by one thread."""

    def __init__(
        self,
        records: SnapshotRecords,
        tenant: str,
        *,
        size_bytes: int,
        limit_bytes: int,
        expected_kind: int,
        require_signature: bool,
    ) -> None:
        """Prefer `RecordTransfer.importer()`."""
        self._records, self._tenant = records, tenant
        self._declared, self._limit = size_bytes, limit_bytes
        self._kind, self._require_signature = expected_kind, require_signature
        self._received = 0
        self._spool = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - closed by abort()
            max_size=_SPOOL_BYTES,
            dir=str(records.store.blobs.spool_dir),
            prefix="import-",
            suffix=".part",
        )

    def write(self, chunk: bytes) -> None:
        """Adds file bytes; InvalidArgumentError past the declared size."""
        if self._received + len(chunk) > self._declared:
            raise InvalidArgumentError(
                f"more than the declared {self._declared} bytes were sent",
                metadata={"field": "chunk", "declared_bytes": str(self._declared)},
            )
        self._received += len(chunk)
        self._spool.write(chunk)

    def commit(self) -> SnapshotRow:
        """Checks the whole file, then stores its payload as a new record of the tenant."""
        if self._received < self._declared:
            raise SnapshotTruncatedError.of(self._declared, self._received)
        self._spool.seek(0)
        raw = self._spool.read()
        key = self._records.signing_key
        if self._require_signature and key is None:
            raise SnapshotSignatureError(
                "a signature is required, and this store holds no key to verify one"
            )
        try:  # the signature first; only a file it does not verify may be called truncated
            parsed = record_format.parse(
                raw, signing_key=key, max_payload_bytes=self._records.store.blobs.max_blob_bytes
            )
        except (SnapshotCorruptError, SnapshotSignatureError):
            declared = record_format.declared_size(raw)
            if declared is not None and declared > len(raw):
                raise SnapshotTruncatedError.of(declared, len(raw)) from None
            raise
        meta = parsed.meta
        if self._require_signature and not parsed.signed:
            raise SnapshotSignatureError("the snapshot is unsigned; a signature is required")
        if self._kind and meta.kind != self._kind:
            raise SnapshotKindMismatchError(
                f"the snapshot is a {record_format.KINDS[meta.kind]} record, not a "
                f"{record_format.KINDS.get(self._kind, str(self._kind))} one",
                metadata={
                    "expected": record_format.KINDS.get(self._kind, str(self._kind)),
                    "actual": record_format.KINDS[meta.kind],
                },
            )
        if meta.tenant != self._tenant:
            raise SnapshotFunctionMismatchError(
                "the snapshot is of another tenant's function",
                metadata={"expected": self._tenant, "actual": meta.tenant},
            )
        if meta.payload_size_bytes > self._limit:
            raise SnapshotTooLargeError.of(meta.payload_size_bytes, self._limit, "snapshot state")
        chunk_bytes = self._records.store.blobs.chunk_bytes
        record_format.verify_payload(parsed, chunk_bytes=chunk_bytes)
        creator = self._records.creator(
            self._tenant,
            kind=meta.kind,
            engine_fingerprint=meta.engine_fingerprint,
            source_digest=meta.source_digest,
            variant=imported_variant(meta.kind, meta.variant),
            payload_size_bytes=meta.payload_size_bytes,
        )
        try:
            for piece in record_format.iter_payload(parsed, chunk_bytes=chunk_bytes):
                creator.write(piece)
            return creator.commit()
        finally:
            creator.abort()

    def abort(self) -> None:
        """Discards what was received."""
        self._spool.close()
