"""Kernel manifests on the gateway's database: insert (once per namespace/name@version),
find as a tenant sees them (its own namespace first, then the shared catalogue), list."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tensorwasm_common.database import ConstraintViolation, Database

from tensorwasm_gateway.errors import KernelAlreadyExistsError

SHARED_NAMESPACE = ""
_SELECT = (
    "SELECT namespace, name, version, sm_version, digest, signature, key_id, entry, "
    "publisher, ptx_size_bytes, publish_time_ns FROM kernels "
)


@dataclass(frozen=True)
class KernelRecord:
    """One published kernel's manifest (the PTX lives in the snapshot store)."""

    namespace: str  # '' for the shared catalogue, else the owning tenant
    name: str
    version: str
    sm_version: int
    digest: bytes
    signature: bytes
    key_id: str
    entry: str
    publisher: str
    ptx_size_bytes: int
    publish_time_ns: int

    @property
    def shared(self) -> bool:
        """True for a kernel of the shared catalogue."""
        return self.namespace == SHARED_NAMESPACE


class KernelCatalog:
    """The `kernels` rows."""

    def __init__(self, database: Database) -> None:
        """On the gateway's open (migrated) database."""
        self.database = database

    def insert(self, record: KernelRecord) -> None:
        """Adds a manifest; KernelAlreadyExistsError if the namespace has that name@version."""
        try:
            with self.database.transaction() as session:
                session.execute(
                    "INSERT INTO kernels (namespace, name, version, sm_version, digest, signature, "
                    "key_id, entry, publisher, ptx_size_bytes, publish_time_ns) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.namespace, record.name, record.version, record.sm_version,
                        record.digest.hex(), record.signature.hex(), record.key_id, record.entry,
                        record.publisher, record.ptx_size_bytes, record.publish_time_ns,
                    ),
                )  # fmt: skip
        except ConstraintViolation:
            raise already_exists(record.namespace, record.name, record.version) from None

    def exists(self, namespace: str, name: str, version: str) -> bool:
        """True when the namespace has a kernel of that name@version."""
        row = self.database.execute(
            "SELECT 1 FROM kernels WHERE namespace = ? AND name = ? AND version = ?",
            (namespace, name, version),
        ).one()
        return row is not None

    def delete(self, namespace: str, name: str, version: str) -> None:
        """Removes a manifest (a publish whose PTX could not be stored)."""
        self.database.execute(
            "DELETE FROM kernels WHERE namespace = ? AND name = ? AND version = ?",
            (namespace, name, version),
        )

    def find(self, tenant: str, name: str, version: str) -> KernelRecord | None:
        """The tenant's own kernel of that name@version, else the shared one, else None."""
        rows = self.database.execute(
            _SELECT + "WHERE name = ? AND version = ? AND namespace IN (?, ?)",
            (name, version, tenant, SHARED_NAMESPACE),
        ).rows
        records = sorted((_record(row) for row in rows), key=lambda r: r.shared)
        return records[0] if records else None

    def list_page(self, tenant: str, offset: int, limit: int) -> list[KernelRecord]:
        """Up to `limit` manifests the tenant sees, after skipping `offset`, ordered by
        name, version and namespace."""
        rows = self.database.execute(
            _SELECT + "WHERE namespace IN (?, ?) "
            "ORDER BY name, version, namespace LIMIT ? OFFSET ?",
            (tenant, SHARED_NAMESPACE, limit, offset),
        ).rows
        return [_record(row) for row in rows]


def already_exists(namespace: str, name: str, version: str) -> KernelAlreadyExistsError:
    """The refusal of a second publish of a name@version in a namespace."""
    where = "the shared catalogue" if namespace == SHARED_NAMESPACE else f"namespace {namespace!r}"
    return KernelAlreadyExistsError(
        f"kernel {name}@{version} is already published in {where}",
        metadata={"name": name, "version": version, "namespace": namespace},
    )


def _record(row: tuple[Any, ...]) -> KernelRecord:
    namespace, name, version, sm, digest, signature, key, entry, publisher, size, time_ns = row
    return KernelRecord(
        str(namespace), str(name), str(version), int(sm), bytes.fromhex(str(digest)),
        bytes.fromhex(str(signature)), str(key), str(entry), str(publisher), int(size),
        int(time_ns),
    )  # fmt: skip
