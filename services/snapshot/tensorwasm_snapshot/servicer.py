"""SnapshotStoreService: proto <-> SnapshotStore translation, blocking I/O off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as pb_grpc
from tensorwasm_common.channels import TENANT_METADATA_KEY
from tensorwasm_common.errors import InvalidArgumentError
from tensorwasm_common.tenants import DEFAULT_TENANT

from tensorwasm_snapshot.blobstore import BlobInfo
from tensorwasm_snapshot.metrics import collect_garbage, record_put
from tensorwasm_snapshot.object_store import ObjectWriter, SnapshotStore, validate_tenant
from tensorwasm_snapshot.record_index import SnapshotRow
from tensorwasm_snapshot.record_transfer import RecordImport, RecordTransfer
from tensorwasm_snapshot.records import SnapshotCreator, SnapshotRecords


def _info(info: BlobInfo) -> pb.BlobInfo:
    return pb.BlobInfo(
        digest=info.digest, size_bytes=info.size_bytes, stored_size_bytes=info.stored_size_bytes
    )


def snapshot_proto(row: SnapshotRow) -> pb.Snapshot:
    """The record's metadata as the API shows it."""
    snapshot = pb.Snapshot(
        id=row.id,
        kind=row.kind,  # type: ignore[arg-type]
        tenant=row.tenant,
        engine_fingerprint=row.engine_fingerprint,
        source_digest=row.source_digest,
        variant=row.variant,
        payload_digest=row.payload_digest,
        payload_size_bytes=row.payload_size_bytes,
        record_digest=row.record_digest,
        record_size_bytes=row.record_size_bytes,
        format_version=row.format_version,
        signed=row.signed,
    )
    snapshot.create_time.FromNanoseconds(row.create_time_ns)
    return snapshot


def tenant_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The tenant named in the call's metadata (validated), or the default tenant."""
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_METADATA_KEY:
            return validate_tenant(str(value))
    return DEFAULT_TENANT


class SnapshotStoreServicer(pb_grpc.SnapshotStoreServiceServicer):
    """Streams blobs in and out of the content-addressed store; references, usage and GC."""

    def __init__(self, store: SnapshotStore, records: SnapshotRecords | None = None) -> None:
        self._store = store
        self._records = records if records is not None else SnapshotRecords(store)
        self._transfer = RecordTransfer(self._records)

    async def PutBlob(
        self,
        request_iterator: AsyncIterator[pb.PutBlobRequest],
        context: grpc.aio.ServicerContext[pb.PutBlobRequest, pb.PutBlobResponse],
    ) -> pb.PutBlobResponse:
        writer: ObjectWriter | None = None
        try:
            async for message in request_iterator:
                part = message.WhichOneof("part")
                if part == "header":
                    if writer is not None:
                        raise InvalidArgumentError(
                            "the header must be the first message", metadata={"field": "header"}
                        )
                    writer = await self._open_writer(message.header, context)
                elif part == "chunk":
                    if writer is None:
                        writer = await asyncio.to_thread(self._store.writer)
                    await asyncio.to_thread(writer.write, message.chunk)
            if writer is None:
                writer = await asyncio.to_thread(self._store.writer)
            info, deduplicated = await asyncio.to_thread(writer.commit)
            record_put(info, deduplicated)
        finally:
            if writer is not None:
                await asyncio.to_thread(writer.abort)
        return pb.PutBlobResponse(blob=_info(info), deduplicated=deduplicated)

    async def _open_writer(
        self,
        header: pb.PutBlobHeader,
        context: grpc.aio.ServicerContext[pb.PutBlobRequest, pb.PutBlobResponse],
    ) -> ObjectWriter:
        # Size cap and quota are checked here, before the first chunk is read.
        ref_name = header.ref_name or None
        return await asyncio.to_thread(
            self._store.writer,
            expected_digest=header.expected_digest or None,
            expected_size=header.size_bytes or None,
            tenant=tenant_of(context) if ref_name is not None else None,
            ref_name=ref_name,
        )

    async def GetBlob(
        self,
        request: pb.GetBlobRequest,
        context: grpc.aio.ServicerContext[pb.GetBlobRequest, pb.GetBlobResponse],
    ) -> AsyncIterator[pb.GetBlobResponse]:
        info = await asyncio.to_thread(self._store.stat, request.digest)
        chunks: Iterator[bytes] = self._store.open_verified(request.digest)
        try:
            # The first chunk arrives only after the whole blob verified; then one bounded
            # chunk at a time, each sent (flow control permitting) before the next is read.
            chunk = await asyncio.to_thread(next, chunks, None)
            yield pb.GetBlobResponse(blob=_info(info), chunk=chunk or b"")
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                yield pb.GetBlobResponse(chunk=chunk)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                await asyncio.to_thread(close)

    async def StatBlob(
        self,
        request: pb.StatBlobRequest,
        context: grpc.aio.ServicerContext[pb.StatBlobRequest, pb.StatBlobResponse],
    ) -> pb.StatBlobResponse:
        info = await asyncio.to_thread(self._store.stat, request.digest)
        return pb.StatBlobResponse(blob=_info(info))

    async def AddRef(
        self,
        request: pb.AddRefRequest,
        context: grpc.aio.ServicerContext[pb.AddRefRequest, pb.AddRefResponse],
    ) -> pb.AddRefResponse:
        info, created = await asyncio.to_thread(
            self._store.add_ref, tenant_of(context), request.digest, request.ref_name
        )
        return pb.AddRefResponse(blob=_info(info), created=created)

    async def RemoveRef(
        self,
        request: pb.RemoveRefRequest,
        context: grpc.aio.ServicerContext[pb.RemoveRefRequest, pb.RemoveRefResponse],
    ) -> pb.RemoveRefResponse:
        removed = await asyncio.to_thread(
            self._store.remove_ref, tenant_of(context), request.digest, request.ref_name
        )
        return pb.RemoveRefResponse(removed=removed)

    async def GetUsage(
        self,
        request: pb.GetUsageRequest,
        context: grpc.aio.ServicerContext[pb.GetUsageRequest, pb.GetUsageResponse],
    ) -> pb.GetUsageResponse:
        usage = await asyncio.to_thread(self._store.usage, tenant_of(context))
        return pb.GetUsageResponse(
            tenant=usage.tenant,
            size_bytes=usage.size_bytes,
            object_count=usage.object_count,
            ref_count=usage.ref_count,
            quota_bytes=self._store.tenant_quota_bytes,
        )

    async def CollectGarbage(
        self,
        request: pb.CollectGarbageRequest,
        context: grpc.aio.ServicerContext[pb.CollectGarbageRequest, pb.CollectGarbageResponse],
    ) -> pb.CollectGarbageResponse:
        report = await asyncio.to_thread(collect_garbage, self._store)
        return pb.CollectGarbageResponse(
            deleted_count=report.deleted_count,
            deleted_size_bytes=report.deleted_size_bytes,
            deleted_stored_size_bytes=report.deleted_stored_size_bytes,
        )

    # --- snapshot records ---

    async def CreateSnapshot(
        self,
        request_iterator: AsyncIterator[pb.CreateSnapshotRequest],
        context: grpc.aio.ServicerContext[pb.CreateSnapshotRequest, pb.CreateSnapshotResponse],
    ) -> pb.CreateSnapshotResponse:
        creator: SnapshotCreator | None = None
        try:
            async for message in request_iterator:
                part = message.WhichOneof("part")
                if part == "header" and creator is None:
                    header = message.header
                    creator = await asyncio.to_thread(
                        self._records.creator,
                        tenant_of(context),
                        kind=header.kind,
                        engine_fingerprint=header.engine_fingerprint,
                        source_digest=header.source_digest,
                        variant=header.variant,
                        payload_size_bytes=header.payload_size_bytes,
                    )
                elif creator is None or part != "chunk":
                    raise InvalidArgumentError(
                        "the header must be the first message, and only it",
                        metadata={"field": "header"},
                    )
                else:
                    await asyncio.to_thread(creator.write, message.chunk)
            if creator is None:
                raise InvalidArgumentError("missing header", metadata={"field": "header"})
            row = await asyncio.to_thread(creator.commit)
        finally:
            if creator is not None:
                await asyncio.to_thread(creator.abort)
        return pb.CreateSnapshotResponse(snapshot=snapshot_proto(row))

    async def GetSnapshot(
        self,
        request: pb.GetSnapshotRequest,
        context: grpc.aio.ServicerContext[pb.GetSnapshotRequest, pb.GetSnapshotResponse],
    ) -> pb.GetSnapshotResponse:
        row = await asyncio.to_thread(self._records.get, tenant_of(context), request.id)
        return pb.GetSnapshotResponse(snapshot=snapshot_proto(row))

    async def FindSnapshot(
        self,
        request: pb.FindSnapshotRequest,
        context: grpc.aio.ServicerContext[pb.FindSnapshotRequest, pb.FindSnapshotResponse],
    ) -> pb.FindSnapshotResponse:
        row = await asyncio.to_thread(
            self._records.find,
            tenant_of(context),
            request.kind,
            request.source_digest,
            request.variant,
            request.engine_fingerprint,
        )
        return pb.FindSnapshotResponse(snapshot=snapshot_proto(row))

    async def ReadSnapshot(
        self,
        request: pb.ReadSnapshotRequest,
        context: grpc.aio.ServicerContext[pb.ReadSnapshotRequest, pb.ReadSnapshotResponse],
    ) -> AsyncIterator[pb.ReadSnapshotResponse]:
        # Verified whole (signature before decompressing, then the payload) before any byte.
        row, chunks = await asyncio.to_thread(
            self._records.open_payload,
            tenant_of(context),
            request.id,
            request.expected_engine_fingerprint,
        )
        chunk = await asyncio.to_thread(next, chunks, None)
        yield pb.ReadSnapshotResponse(snapshot=snapshot_proto(row), chunk=chunk or b"")
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield pb.ReadSnapshotResponse(chunk=chunk)

    async def ListSnapshots(
        self,
        request: pb.ListSnapshotsRequest,
        context: grpc.aio.ServicerContext[pb.ListSnapshotsRequest, pb.ListSnapshotsResponse],
    ) -> pb.ListSnapshotsResponse:
        rows, token = await asyncio.to_thread(
            self._records.list,
            tenant_of(context),
            page_size=request.page_size,
            page_token=request.page_token,
            kind=request.kind,
            source_digest=request.source_digest,
        )
        return pb.ListSnapshotsResponse(
            snapshots=[snapshot_proto(row) for row in rows], next_page_token=token
        )

    async def DeleteSnapshot(
        self,
        request: pb.DeleteSnapshotRequest,
        context: grpc.aio.ServicerContext[pb.DeleteSnapshotRequest, pb.DeleteSnapshotResponse],
    ) -> pb.DeleteSnapshotResponse:
        await asyncio.to_thread(self._records.delete, tenant_of(context), request.id)
        return pb.DeleteSnapshotResponse()

    async def ExportSnapshot(
        self,
        request: pb.ExportSnapshotRequest,
        context: grpc.aio.ServicerContext[pb.ExportSnapshotRequest, pb.ExportSnapshotResponse],
    ) -> AsyncIterator[pb.ExportSnapshotResponse]:
        row, raw = await asyncio.to_thread(self._transfer.export, tenant_of(context), request.id)
        chunk_bytes = self._store.blobs.chunk_bytes
        view = memoryview(raw)
        yield pb.ExportSnapshotResponse(
            snapshot=snapshot_proto(row), chunk=bytes(view[:chunk_bytes])
        )
        for start in range(chunk_bytes, len(raw), chunk_bytes):
            yield pb.ExportSnapshotResponse(chunk=bytes(view[start : start + chunk_bytes]))

    async def ImportSnapshot(
        self,
        request_iterator: AsyncIterator[pb.ImportSnapshotRequest],
        context: grpc.aio.ServicerContext[pb.ImportSnapshotRequest, pb.ImportSnapshotResponse],
    ) -> pb.ImportSnapshotResponse:
        importer: RecordImport | None = None
        try:
            async for message in request_iterator:
                part = message.WhichOneof("part")
                if part == "header" and importer is None:
                    header = message.header
                    importer = await asyncio.to_thread(
                        self._transfer.importer,
                        tenant_of(context),
                        size_bytes=header.size_bytes,
                        expected_kind=header.expected_kind,
                        max_restore_bytes=header.max_restore_bytes,
                        require_signature=header.require_signature,
                    )
                elif importer is None or part != "chunk":
                    raise InvalidArgumentError(
                        "the header must be the first message, and only it",
                        metadata={"field": "header"},
                    )
                else:
                    await asyncio.to_thread(importer.write, message.chunk)
            if importer is None:
                raise InvalidArgumentError("missing header", metadata={"field": "header"})
            row = await asyncio.to_thread(importer.commit)
        finally:
            if importer is not None:
                await asyncio.to_thread(importer.abort)
        return pb.ImportSnapshotResponse(snapshot=snapshot_proto(row))
