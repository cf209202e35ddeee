"""Async client of the snapshot store's record API (CreateSnapshot, FindSnapshot, ...)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import blake3
import grpc
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb

from tensorwasm_common.errors import (
    ServiceError,
    SnapshotCorruptError,
    SnapshotNotFoundError,
)
from tensorwasm_common.snapshot_errors import typed_snapshot_error
from tensorwasm_common.status import downstream_error
from tensorwasm_common.store_client_base import CHUNK_BYTES, StoreClientBase

COMPILED_MODULE = pb.SNAPSHOT_KIND_COMPILED_MODULE
INSTANCE_IMAGE = pb.SNAPSHOT_KIND_INSTANCE_IMAGE
INSTANCE_STATE = pb.SNAPSHOT_KIND_INSTANCE_STATE
# Compiled artifacts depend only on (wasm digest, engine fingerprint), not on who deployed
# the module, so the fleet keeps them under one store tenant of its own.
ARTIFACT_TENANT = "fleet-artifacts"


def _error(exc: grpc.aio.AioRpcError) -> ServiceError:
    return typed_snapshot_error(downstream_error(exc, "snapshot store"))


class SnapshotClient(StoreClientBase):
    """Creates, finds, reads, lists and deletes snapshot records as a tenant.

    `tenant` (per client, or per call) goes out as `x-tensorwasm-tenant` metadata; without
    one the store uses its default tenant. Errors are the typed ones of
    `tensorwasm_common.snapshot_errors` where the store gave a snapshot reason.
    """

    async def create_snapshot(
        self,
        kind: pb.SnapshotKind.ValueType,
        engine_fingerprint: str,
        source_digest: str,
        payload: bytes,
        *,
        variant: str = "",
        tenant: str | None = None,
    ) -> pb.Snapshot:
        """Stores `payload` as the tenant's record for (kind, fingerprint, source, variant),
        replacing an older one of the same key; -> the new record."""
        header = pb.CreateSnapshotHeader(
            kind=kind,
            engine_fingerprint=engine_fingerprint,
            source_digest=source_digest,
            variant=variant,
            payload_size_bytes=len(payload),
        )

        async def messages() -> AsyncIterator[pb.CreateSnapshotRequest]:
            yield pb.CreateSnapshotRequest(header=header)
            view = memoryview(payload)
            for start in range(0, len(payload), CHUNK_BYTES):
                yield pb.CreateSnapshotRequest(chunk=bytes(view[start : start + CHUNK_BYTES]))

        try:
            response: pb.CreateSnapshotResponse = await self._stub.CreateSnapshot(
                messages(), timeout=self._timeout, metadata=self._metadata(tenant)
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from exc
        return response.snapshot

    async def get_snapshot(self, snapshot_id: str, *, tenant: str | None = None) -> pb.Snapshot:
        """The record's metadata; SnapshotNotFoundError if the tenant has no such record."""
        try:
            response: pb.GetSnapshotResponse = await self._stub.GetSnapshot(
                pb.GetSnapshotRequest(id=snapshot_id),
                timeout=self._timeout,
                metadata=self._metadata(tenant),
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from exc
        return response.snapshot

    async def find_snapshot(
        self,
        kind: pb.SnapshotKind.ValueType,
        source_digest: str,
        engine_fingerprint: str,
        *,
        variant: str = "",
        tenant: str | None = None,
    ) -> pb.Snapshot | None:
        """The tenant's record for (kind, source, variant) made by `engine_fingerprint`.

        Returns None when there is none at all; raises FingerprintMismatchError when there
        is one only for another engine fingerprint.
        """
        request = pb.FindSnapshotRequest(
            kind=kind,
            source_digest=source_digest,
            variant=variant,
            engine_fingerprint=engine_fingerprint,
        )
        try:
            response: pb.FindSnapshotResponse = await self._stub.FindSnapshot(
                request, timeout=self._timeout, metadata=self._metadata(tenant)
            )
        except grpc.aio.AioRpcError as exc:
            error = _error(exc)
            if isinstance(error, SnapshotNotFoundError):
                return None
            raise error from exc
        return response.snapshot

    async def read_snapshot_stream(
        self, snapshot_id: str, expected_engine_fingerprint: str, *, tenant: str | None = None
    ) -> AsyncIterator[tuple[pb.Snapshot | None, bytes]]:
        """Yields (record on the first message else None, payload chunk) as they arrive;
        raises SnapshotCorruptError after the last one if they miss the payload digest."""
        request = pb.ReadSnapshotRequest(
            id=snapshot_id, expected_engine_fingerprint=expected_engine_fingerprint
        )
        hasher, snapshot = blake3.blake3(), None
        try:
            async for message in self._stub.ReadSnapshot(
                request, timeout=self._timeout, metadata=self._metadata(tenant)
            ):
                first = message.snapshot if message.HasField("snapshot") else None
                snapshot = snapshot or first
                hasher.update(message.chunk)
                yield first, message.chunk
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from exc
        if snapshot is None or hasher.hexdigest() != snapshot.payload_digest:
            raise SnapshotCorruptError(
                "snapshot payload does not match its digest", metadata={"id": snapshot_id}
            )

    async def read_snapshot(
        self, snapshot_id: str, expected_engine_fingerprint: str, *, tenant: str | None = None
    ) -> bytes:
        """The record's payload, verified by the store (signature, digest) and again here."""
        stream = self.read_snapshot_stream(snapshot_id, expected_engine_fingerprint, tenant=tenant)
        return b"".join([chunk async for _, chunk in stream])

    async def list_snapshots(
        self,
        *,
        kind: pb.SnapshotKind.ValueType = pb.SNAPSHOT_KIND_UNSPECIFIED,
        source_digest: str = "",
        page_size: int = 0,
        page_token: str = "",
        tenant: str | None = None,
    ) -> pb.ListSnapshotsResponse:
        """One page of the tenant's records, newest first (`next_page_token` for the next)."""
        request = pb.ListSnapshotsRequest(
            page_size=page_size, page_token=page_token, kind=kind, source_digest=source_digest
        )
        try:
            response: pb.ListSnapshotsResponse = await self._stub.ListSnapshots(
                request, timeout=self._timeout, metadata=self._metadata(tenant)
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from exc
        return response

    async def delete_snapshot(self, snapshot_id: str, *, tenant: str | None = None) -> None:
        """Deletes the record and releases its blob; SnapshotNotFoundError if absent."""
        try:
            await self._stub.DeleteSnapshot(
                pb.DeleteSnapshotRequest(id=snapshot_id),
                timeout=self._timeout,
                metadata=self._metadata(tenant),
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from exc

    async def export_snapshot(
        self, snapshot_id: str, *, tenant: str | None = None
    ) -> AsyncIterator[tuple[pb.Snapshot | None, bytes]]:
        """Yields (record on the first message else None, chunk of its file as stored)."""
        try:
            async for message in self._stub.ExportSnapshot(
                pb.ExportSnapshotRequest(id=snapshot_id),
                timeout=self._timeout,
                metadata=self._metadata(tenant),
            ):
                first = message.snapshot if message.HasField("snapshot") else None
                yield first, message.chunk
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from exc

    async def import_snapshot(
        self,
        chunks: AsyncIterator[bytes],
        *,
        size_bytes: int,
        expected_kind: pb.SnapshotKind.ValueType = pb.SNAPSHOT_KIND_UNSPECIFIED,
        max_restore_bytes: int = 0,
        require_signature: bool = False,
        tenant: str | None = None,
    ) -> pb.Snapshot:
        """Stores a record file (its `size_bytes` in `chunks`) as a new record of the
        tenant, checked whole by the store first; -> the new record."""
        header = pb.ImportSnapshotHeader(
            size_bytes=size_bytes,
            expected_kind=expected_kind,
            max_restore_bytes=max_restore_bytes,
            require_signature=require_signature,
        )

        async def messages() -> AsyncIterator[pb.ImportSnapshotRequest]:
            yield pb.ImportSnapshotRequest(header=header)
            async for chunk in chunks:
                yield pb.ImportSnapshotRequest(chunk=chunk)

        try:
            response: pb.ImportSnapshotResponse = await self._stub.ImportSnapshot(
                messages(), timeout=self._timeout, metadata=self._metadata(tenant)
            )
        except grpc.aio.AioRpcError as exc:
            raise _error(exc) from exc
        return response.snapshot

    async def delete_compiled_artifacts(self, source_digest: str) -> int:
        """Deletes the fleet's compiled artifacts of a module (one per engine fingerprint),
        releasing their blobs; -> how many. An executor that needs one again compiles it."""
        return await self._delete_records(COMPILED_MODULE, source_digest, ARTIFACT_TENANT)

    async def delete_instance_images(self, tenant: str, source_digest: str) -> int:
        """Deletes the tenant's pre-initialised instance images of a module (one per init
        export and engine fingerprint), releasing their blobs; -> how many. An executor
        that needs one again runs init again."""
        return await self._delete_records(INSTANCE_IMAGE, source_digest, tenant)

    async def _delete_records(
        self, kind: pb.SnapshotKind.ValueType, source_digest: str, tenant: str
    ) -> int:
        """Deletes every record of `kind` made from `source_digest` under `tenant`, page by
        page; one another gateway deleted meanwhile is skipped. -> how many it deleted."""
        deleted = 0
        token = ""
        while True:
            page = await self.list_snapshots(
                kind=kind,
                source_digest=source_digest,
                page_size=1000,
                page_token=token,
                tenant=tenant,
            )
            for record in page.snapshots:
                try:
                    await self.delete_snapshot(record.id, tenant=tenant)
                except SnapshotNotFoundError:
                    continue  # deleted meanwhile, by another gateway
                deleted += 1
            token = page.next_page_token
            if not token:
                return deleted


__all__ = [
    "ARTIFACT_TENANT",
    "COMPILED_MODULE",
    "INSTANCE_IMAGE",
    "INSTANCE_STATE",
    "SnapshotClient",
]
