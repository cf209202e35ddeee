"""SnapshotStoreService: proto <-> BlobStore translation, blocking I/O off the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as pb_grpc
from tensorwasm_common.errors import InvalidArgumentError

from tensorwasm_snapshot.blobstore import BlobInfo, BlobStore


def _info(info: BlobInfo) -> pb.BlobInfo:
    return pb.BlobInfo(
        digest=info.digest, size_bytes=info.size_bytes, stored_size_bytes=info.stored_size_bytes
    )


class SnapshotStoreServicer(pb_grpc.SnapshotStoreServiceServicer):
    """Streams blobs in and out of the content-addressed store."""

    def __init__(self, store: BlobStore) -> None:
        self._store = store

    async def PutBlob(
        self, request_iterator: AsyncIterator[pb.PutBlobRequest], context: grpc.aio.ServicerContext
    ) -> pb.PutBlobResponse:
        first = True
        writer = None
        try:
            async for message in request_iterator:
                part = message.WhichOneof("part")
                if part == "header":
                    if not first:
                        raise InvalidArgumentError(
                            "the header must be the first message", metadata={"field": "header"}
                        )
                    header = message.header
                    writer = self._store.writer(
                        expected_digest=header.expected_digest or None,
                        expected_size=header.size_bytes or None,
                    )
                elif part == "chunk":
                    if writer is None:
                        writer = self._store.writer()
                    await asyncio.to_thread(writer.write, message.chunk)
                first = False
            if writer is None:
                writer = self._store.writer()
            info, deduplicated = await asyncio.to_thread(writer.commit)
        finally:
            if writer is not None:
                await asyncio.to_thread(writer.abort)
        return pb.PutBlobResponse(blob=_info(info), deduplicated=deduplicated)

    async def GetBlob(
        self, request: pb.GetBlobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GetBlobResponse]:
        info = await asyncio.to_thread(self._store.stat, request.digest)
        chunks: Iterator[bytes] = self._store.open_verified(request.digest)
        try:
            # The first chunk arrives only after the whole blob verified.
            chunk = await asyncio.to_thread(next, chunks, None)
            yield pb.GetBlobResponse(blob=_info(info), chunk=chunk or b"")
            while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
                yield pb.GetBlobResponse(chunk=chunk)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                await asyncio.to_thread(close)

    async def StatBlob(
        self, request: pb.StatBlobRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatBlobResponse:
        info = await asyncio.to_thread(self._store.stat, request.digest)
        return pb.StatBlobResponse(blob=_info(info))
