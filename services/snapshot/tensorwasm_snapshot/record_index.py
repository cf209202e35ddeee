"""Snapshot record rows in the store's index: insert-or-replace, lookups, pages, orphans.

A record's blob is referenced by its tenant under `snapshots/<id>`; the row is written after
that reference (and deleted before it is released), so a crash can leave only a reference
with no row, which `orphan_refs` finds for the store to release when it opens.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tensorwasm_snapshot.blob_index import BlobIndex

REF_PREFIX = "snapshots/"
_SELECT = (  # every column, in SnapshotRow's order
    "SELECT id, tenant, kind, engine_fingerprint, source_digest, variant, payload_digest,"
    " payload_size_bytes, record_digest, record_size_bytes, create_time_ns, format_version, signed"
    " FROM snapshots WHERE "
)
_INSERT = "INSERT INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


@dataclasses.dataclass(frozen=True)
class SnapshotRow:
    """One snapshot record as indexed (its payload lives in the blob `record_digest`)."""

    id: str
    tenant: str
    kind: int
    engine_fingerprint: str
    source_digest: str
    variant: str
    payload_digest: str
    payload_size_bytes: int
    record_digest: str
    record_size_bytes: int
    create_time_ns: int
    format_version: int
    signed: bool

    @property
    def ref_name(self) -> str:
        """The name of the tenant's reference to the record blob."""
        return REF_PREFIX + self.id


_FIELDS = tuple(field.name for field in dataclasses.fields(SnapshotRow))


def _row(values: tuple[Any, ...]) -> SnapshotRow:
    fields = dict(zip(_FIELDS, values, strict=True))
    fields["signed"] = bool(fields["signed"])
    return SnapshotRow(**fields)


class RecordIndex:
    """Queries of the `snapshots` table; every write is one durable transaction."""

    def __init__(self, index: BlobIndex) -> None:
        """Uses the blob index's database (the table is created with it)."""
        self._index = index

    def put(self, row: SnapshotRow) -> SnapshotRow | None:
        """Inserts `row`, replacing the tenant's record of the same key; -> the replaced one."""
        with self._index.transaction() as db:
            old = db.execute(
                _SELECT + "tenant = ? AND kind = ?"
                " AND source_digest = ? AND variant = ? AND engine_fingerprint = ?",
                (row.tenant, row.kind, row.source_digest, row.variant, row.engine_fingerprint),
            ).one()
            if old is not None:
                db.execute("DELETE FROM snapshots WHERE id = ?", (old[0],))
            db.execute(_INSERT, (*dataclasses.astuple(row)[:-1], int(row.signed)))
        return None if old is None else _row(old)

    def get(self, tenant: str, snapshot_id: str) -> SnapshotRow | None:
        """The tenant's record of that id, or None (also when another tenant owns it)."""
        with self._index.reading() as db:
            found = db.execute(
                _SELECT + "id = ? AND tenant = ?",
                (snapshot_id, tenant),
            ).one()
        return None if found is None else _row(found)

    def matching(
        self, tenant: str, kind: int, source_digest: str, variant: str
    ) -> list[SnapshotRow]:
        """The tenant's records of (kind, source, variant), any fingerprint, newest first."""
        with self._index.reading() as db:
            rows = db.execute(
                _SELECT + "tenant = ? AND kind = ?"
                " AND source_digest = ? AND variant = ? ORDER BY create_time_ns DESC, id DESC",
                (tenant, kind, source_digest, variant),
            ).rows
        return [_row(values) for values in rows]

    def page(
        self,
        tenant: str,
        *,
        limit: int,
        kind: int = 0,
        source_digest: str = "",
        before: tuple[int, str] | None = None,
    ) -> list[SnapshotRow]:
        """Up to `limit` of the tenant's records, newest first, older than `before`
        (create_time_ns, id) when given; `kind` 0 and `source_digest` "" match all."""
        clauses, args = ["tenant = ?"], [tenant]
        if kind:
            clauses.append("kind = ?")
            args.append(kind)  # type: ignore[arg-type]
        if source_digest:
            clauses.append("source_digest = ?")
            args.append(source_digest)
        if before is not None:
            clauses.append("(create_time_ns, id) < (?, ?)")
            args.extend(before)  # type: ignore[arg-type]
        with self._index.reading() as db:
            rows = db.execute(
                _SELECT + " AND ".join(clauses) + " ORDER BY create_time_ns DESC, id DESC LIMIT ?",
                (*args, limit),
            ).rows
        return [_row(values) for values in rows]

    def delete(self, tenant: str, snapshot_id: str) -> SnapshotRow | None:
        """Deletes the tenant's record; -> the deleted row, or None if it had none."""
        with self._index.transaction() as db:
            found = db.execute(
                _SELECT + "id = ? AND tenant = ?",
                (snapshot_id, tenant),
            ).one()
            if found is not None:
                db.execute("DELETE FROM snapshots WHERE id = ?", (snapshot_id,))
        return None if found is None else _row(found)

    def orphan_refs(self, *, created_before_ns: int | None = None) -> list[tuple[str, str, str]]:
        """(tenant, digest, ref_name) of record references whose record row is gone (made
        at or before `created_before_ns`, when given)."""
        with self._index.reading() as db:
            rows = db.execute(
                "SELECT tenant, digest, ref_name FROM refs WHERE substr(ref_name, 1, ?) = ?"
                " AND substr(ref_name, ?) NOT IN (SELECT id FROM snapshots)"
                " AND create_time_ns <= ?",
                (
                    len(REF_PREFIX),
                    REF_PREFIX,
                    len(REF_PREFIX) + 1,
                    (1 << 63) - 1 if created_before_ns is None else created_before_ns,
                ),
            ).rows
        return [(str(t), str(d), str(n)) for t, d, n in rows]

    def unreferenced(self, *, limit: int = 20) -> list[str]:
        """Ids of records whose tenant's reference to the record blob is missing (the
        collector would delete a record that is still listed)."""
        with self._index.reading() as db:
            rows = db.execute(
                "SELECT id FROM snapshots WHERE NOT EXISTS (SELECT 1 FROM refs"
                " WHERE refs.tenant = snapshots.tenant AND refs.digest = snapshots.record_digest"
                " AND refs.ref_name = ? || snapshots.id) LIMIT ?",
                (REF_PREFIX, limit),
            ).rows
        return [str(snapshot_id) for (snapshot_id,) in rows]

    def count(self) -> int:
        """Number of records of every tenant."""
        with self._index.reading() as db:
            total = db.execute("SELECT count(*) FROM snapshots").rows[0][0]
        return int(total)
