"""KernelService: publish a signed kernel (checks in a fixed order, nothing stored on a
refusal), get one with its verified PTX, list what a tenant sees."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from tensorwasm_common.errors import ServiceError
from tensorwasm_common.gpu_abi import MAX_PTX_BYTES
from tensorwasm_common.kernel_records import (
    KERNEL_FINGERPRINT,
    KERNEL_KIND,
    KERNEL_TENANT,
    KernelHeader,
    KernelPayloadError,
    decode_kernel_payload,
    encode_kernel_payload,
    kernel_record_key,
)
from tensorwasm_common.snapshot_client import SnapshotClient

from tensorwasm_gateway.errors import (
    KernelBadSignatureError,
    KernelDigestMismatchError,
    KernelManifestInvalidError,
    KernelNameInvalidError,
    KernelNotFoundError,
    KernelPtxTooLargeError,
    KernelPublishScopeRequiredError,
    KernelRegistryNotConfiguredError,
    KernelRegistryStorageError,
    KernelSigningKeyMismatchError,
    KernelVersionInvalidError,
)
from tensorwasm_gateway.kernels import signing
from tensorwasm_gateway.kernels.catalog import (
    SHARED_NAMESPACE,
    KernelCatalog,
    KernelRecord,
    already_exists,
)

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KernelPublication:
    """What a publisher sends: the signed manifest's fields and the PTX text."""

    name: str
    version: str
    sm_version: int
    digest: bytes
    signature: bytes
    ptx: bytes
    key_id: str = ""
    entry: str = ""
    private: bool = False


@dataclass(frozen=True)
class Publisher:
    """Who publishes: the tenant, the token's id, and whether it may write the shared
    catalogue (role=publish or admin)."""

    tenant: str
    token_id: str
    may_publish_shared: bool


class KernelService:
    """The kernel registry: manifests in the gateway's database, PTX in the snapshot store."""

    def __init__(self, catalog: KernelCatalog, store: SnapshotClient, key: bytes | None) -> None:
        """Args: catalog: the manifests; store: the snapshot store; key: the HMAC key
        (None: publishing is refused, KERNEL_REGISTRY_NOT_CONFIGURED)."""
        self._catalog = catalog
        self._store = store
        self._key = key

    async def publish(self, publisher: Publisher, publication: KernelPublication) -> KernelRecord:
        """Checks the publication, then records it and stores its PTX.

        Order: scope, configured key, fields (name, version, sm_version, sizes, entry),
        digest, key id, signature, duplicate. Any refusal stores nothing.
        """
        if not publication.private and not publisher.may_publish_shared:
            raise KernelPublishScopeRequiredError(
                "publishing to the shared kernel catalogue needs a token with role=publish "
                "or role=admin (or publish a private kernel)",
                metadata={"token_id": publisher.token_id},
            )
        if self._key is None:
            raise KernelRegistryNotConfiguredError(
                "the kernel registry has no signing key (TENSORWASM_GATEWAY_KERNEL_HMAC_KEY_FILE)"
            )
        entry = _checked_fields(publication)
        _check_signature(self._key, publication)
        namespace = publisher.tenant if publication.private else SHARED_NAMESPACE
        record = KernelRecord(
            namespace=namespace,
            name=publication.name,
            version=publication.version,
            sm_version=publication.sm_version,
            digest=publication.digest,
            signature=publication.signature,
            key_id=signing.key_id(self._key),
            entry=entry,
            publisher=publisher.token_id,
            ptx_size_bytes=len(publication.ptx),
            publish_time_ns=time.time_ns(),
        )
        await self._record(record, publication.ptx)
        return record

    async def _record(self, record: KernelRecord, ptx: bytes) -> None:
        """The row first (it decides a race for the name@version), then the PTX; a failed
        store removes the row again."""
        key = (record.namespace, record.name, record.version)
        if await asyncio.to_thread(self._catalog.exists, *key):
            raise already_exists(*key)
        await asyncio.to_thread(self._catalog.insert, record)
        source_digest, variant = kernel_record_key(*key)
        header = KernelHeader(
            record.name, record.version, record.sm_version, record.entry, record.digest.hex()
        )
        try:
            await self._store.create_snapshot(
                KERNEL_KIND, KERNEL_FINGERPRINT, source_digest,
                encode_kernel_payload(header, ptx), variant=variant, tenant=KERNEL_TENANT,
            )  # fmt: skip
        except BaseException as exc:
            await asyncio.shield(asyncio.to_thread(self._catalog.delete, *key))
            if isinstance(exc, ServiceError):
                _log.warning("kernel PTX not stored: %s", exc, extra={"kernel": f"{key}"})
                raise KernelRegistryStorageError(
                    f"the snapshot store did not take the PTX: {exc.message}",
                    metadata={"name": record.name, "version": record.version},
                ) from exc
            raise

    async def get(self, tenant: str, name: str, version: str) -> tuple[KernelRecord, bytes]:
        """The manifest the tenant sees for name@version and its PTX (digest verified)."""
        record = await asyncio.to_thread(self._catalog.find, tenant, name, version)
        if record is None:
            raise _not_found(name, version)
        source_digest, variant = kernel_record_key(record.namespace, name, version)
        snapshot = await self._store.find_snapshot(
            KERNEL_KIND, source_digest, KERNEL_FINGERPRINT, variant=variant, tenant=KERNEL_TENANT
        )
        if snapshot is None:
            raise KernelRegistryStorageError(
                f"the PTX of kernel {name}@{version} is missing from the snapshot store",
                metadata={"name": name, "version": version},
            )
        payload = await self._store.read_snapshot(
            snapshot.id, KERNEL_FINGERPRINT, tenant=KERNEL_TENANT
        )
        try:
            header, ptx = decode_kernel_payload(payload)
        except KernelPayloadError:
            header, ptx = None, b""
        if header is None or header.digest != record.digest.hex():
            raise KernelRegistryStorageError(
                f"the stored PTX of kernel {name}@{version} does not match its manifest",
                metadata={"name": name, "version": version},
            )
        return record, ptx

    async def list_page(self, tenant: str, offset: int, limit: int) -> list[KernelRecord]:
        """Up to `limit` manifests the tenant sees, after `offset` of them."""
        return await asyncio.to_thread(self._catalog.list_page, tenant, offset, limit)


def _checked_fields(publication: KernelPublication) -> str:
    """Checks names, sizes and the entry; returns the entry a guest launches."""
    if not signing.name_valid(publication.name):
        raise KernelNameInvalidError(
            f"kernel name {publication.name[:80]!r} must be 1-64 characters of [A-Za-z0-9._-] "
            "starting with a letter or digit",
            metadata={"name": publication.name[:80]},
        )
    if not signing.version_valid(publication.version):
        raise KernelVersionInvalidError(
            f"version {publication.version[:80]!r} is not a SemVer 2.0.0 version "
            "(MAJOR.MINOR.PATCH[-pre][+build], at most 64 characters)",
            metadata={"version": publication.version[:80]},
        )
    if not signing.MIN_SM_VERSION <= publication.sm_version <= signing.MAX_SM_VERSION:
        raise _invalid("sm_version", "sm_version must be in 10..1000 (80 for sm_80)")
    if len(publication.digest) != signing.DIGEST_BYTES:
        raise _invalid("digest", "the digest must be 32 bytes (BLAKE3 of the PTX text)")
    if len(publication.signature) != signing.SIGNATURE_BYTES:
        raise _invalid("signature", "the signature must be 32 bytes (HMAC-SHA256)")
    size = len(publication.ptx)
    if size > MAX_PTX_BYTES:
        raise KernelPtxTooLargeError(
            f"the PTX text has {size} bytes, more than {MAX_PTX_BYTES}",
            metadata={"size_bytes": str(size), "max_bytes": str(MAX_PTX_BYTES)},
        )
    if size == 0:
        raise _invalid("ptx_text", "the PTX text is empty")
    entries = signing.ptx_entries(publication.ptx)
    entry = publication.entry
    if not entry:
        if len(entries) != 1:
            raise _invalid(
                "entry", f"the PTX declares {len(entries)} entries: name the one to launch"
            )
        return entries[0]
    if entry not in entries:
        raise _invalid("entry", f"the PTX declares no `.entry {entry[:80]}`")
    return entry


def _check_signature(key: bytes, publication: KernelPublication) -> None:
    """Digest first, then the key's id, then the HMAC."""
    actual = signing.ptx_digest(publication.ptx)
    if actual != publication.digest:
        raise KernelDigestMismatchError(
            "the PTX text's BLAKE3 digest is not the manifest's",
            metadata={"declared": publication.digest.hex(), "actual": actual.hex()},
        )
    expected_key_id = signing.key_id(key)
    if publication.key_id and publication.key_id != expected_key_id:
        raise KernelSigningKeyMismatchError(
            "the manifest was signed with another key than the registry's",
            metadata={"key_id": publication.key_id[:32], "expected_key_id": expected_key_id},
        )
    valid = signing.signature_valid(
        key,
        publication.name,
        publication.version,
        sm_version=publication.sm_version,
        digest=publication.digest,
        signature=publication.signature,
    )
    if not valid:
        raise KernelBadSignatureError(
            f"the signature of {publication.name}@{publication.version} does not verify",
            metadata={"name": publication.name, "version": publication.version},
        )


def _invalid(field: str, message: str) -> KernelManifestInvalidError:
    return KernelManifestInvalidError(message, metadata={"field": field})


def _not_found(name: str, version: str) -> KernelNotFoundError:
    return KernelNotFoundError(
        f"kernel {name[:80]}@{version[:80]} not found",
        metadata={"name": name[:80], "version": version[:80]},
    )
