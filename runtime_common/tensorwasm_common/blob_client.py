"""Async client of the snapshot store's blob API, verifying every digest it receives."""

from __future__ import annotations

from collections.abc import AsyncIterator

import blake3
import grpc
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as pb_grpc

from tensorwasm_common.errors import DataLossError
from tensorwasm_common.status import downstream_error

CHUNK_BYTES = 1 << 20


class BlobClient:
    """Puts and gets whole blobs over the streamed RPCs."""

    def __init__(self, channel: grpc.aio.Channel, *, timeout_seconds: float = 60.0) -> None:
        self._stub = pb_grpc.SnapshotStoreServiceStub(channel)
        self._timeout = timeout_seconds

    async def put(self, data: bytes, *, expected_digest: str = "") -> pb.PutBlobResponse:
        """Stores `data`; the store refuses it if it does not hash to `expected_digest`."""

        async def messages() -> AsyncIterator[pb.PutBlobRequest]:
            header = pb.PutBlobHeader(expected_digest=expected_digest, size_bytes=len(data))
            yield pb.PutBlobRequest(header=header)
            view = memoryview(data)
            for offset in range(0, len(data), CHUNK_BYTES):
                yield pb.PutBlobRequest(chunk=bytes(view[offset : offset + CHUNK_BYTES]))

        try:
            response: pb.PutBlobResponse = await self._stub.PutBlob(
                messages(), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise downstream_error(exc, "snapshot store") from exc
        return response

    async def get(self, digest: str) -> bytes:
        """Fetches a blob and checks that its bytes hash to `digest`."""
        hasher = blake3.blake3()
        parts: list[bytes] = []
        try:
            async for message in self._stub.GetBlob(
                pb.GetBlobRequest(digest=digest), timeout=self._timeout
            ):
                hasher.update(message.chunk)
                parts.append(message.chunk)
        except grpc.aio.AioRpcError as exc:
            raise downstream_error(exc, "snapshot store") from exc
        if hasher.hexdigest() != digest:
            raise DataLossError(
                "blob bytes do not match their digest",
                reason="BLOB_INTEGRITY",
                metadata={"digest": digest},
            )
        return b"".join(parts)
