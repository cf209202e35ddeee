"""Async client of the snapshot store's blob API, verifying every digest it receives."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable

import blake3
import grpc
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb

from tensorwasm_common.errors import BlobIntegrityError
from tensorwasm_common.status import downstream_error
from tensorwasm_common.store_client_base import CHUNK_BYTES, StoreClientBase


class BlobClient(StoreClientBase):
    """Puts and gets blobs over the streamed RPCs; references and usage as a tenant.

    `tenant` (per client, or per call) goes out as `x-tensorwasm-tenant` metadata; without
    one the store uses its default tenant.
    """

    async def put(
        self,
        data: bytes,
        *,
        expected_digest: str = "",
        ref_name: str = "",
        tenant: str | None = None,
    ) -> pb.PutBlobResponse:
        """Stores `data`; the store refuses it if it does not hash to `expected_digest`.

        With `ref_name`, the tenant's reference is added as the upload commits.
        """
        view = memoryview(data)
        chunks = (bytes(view[i : i + CHUNK_BYTES]) for i in range(0, len(data), CHUNK_BYTES))
        return await self.put_stream(
            chunks,
            expected_digest=expected_digest,
            size_bytes=len(data),
            ref_name=ref_name,
            tenant=tenant,
        )

    async def put_stream(
        self,
        chunks: AsyncIterable[bytes] | Iterable[bytes],
        *,
        expected_digest: str = "",
        size_bytes: int = 0,
        ref_name: str = "",
        tenant: str | None = None,
    ) -> pb.PutBlobResponse:
        """Stores the concatenated `chunks` (each at most a few MiB) without holding them all.

        A non-zero `size_bytes` lets the store refuse an object over its cap or the tenant's
        quota before any chunk is sent.
        """
        header = pb.PutBlobHeader(
            expected_digest=expected_digest, size_bytes=size_bytes, ref_name=ref_name
        )

        async def messages() -> AsyncIterator[pb.PutBlobRequest]:
            yield pb.PutBlobRequest(header=header)
            if isinstance(chunks, AsyncIterable):
                async for chunk in chunks:
                    yield pb.PutBlobRequest(chunk=chunk)
            else:
                for chunk in chunks:
                    yield pb.PutBlobRequest(chunk=chunk)

        try:
            response: pb.PutBlobResponse = await self._stub.PutBlob(
                messages(), timeout=self._timeout, metadata=self._metadata(tenant)
            )
        except grpc.aio.AioRpcError as exc:
            raise downstream_error(exc, "snapshot store") from exc
        return response

    async def get(self, digest: str) -> bytes:
        """Fetches a blob and checks that its bytes hash to `digest`."""
        return b"".join([chunk async for chunk in self.get_stream(digest)])

    async def get_stream(self, digest: str) -> AsyncIterator[bytes]:
        """Yields a blob's chunks as they arrive; raises DataLossError after the last one if
        they do not hash to `digest` (the store verified them before sending any)."""
        hasher = blake3.blake3()
        try:
            async for message in self._stub.GetBlob(
                pb.GetBlobRequest(digest=digest), timeout=self._timeout
            ):
                hasher.update(message.chunk)
                yield message.chunk
        except grpc.aio.AioRpcError as exc:
            raise downstream_error(exc, "snapshot store") from exc
        if hasher.hexdigest() != digest:
            raise BlobIntegrityError(digest, "the received bytes do not match the digest")

    async def add_ref(self, digest: str, ref_name: str, *, tenant: str | None = None) -> bool:
        """Adds the tenant's reference to a stored blob; False if it existed already."""
        try:
            response: pb.AddRefResponse = await self._stub.AddRef(
                pb.AddRefRequest(digest=digest, ref_name=ref_name),
                timeout=self._timeout,
                metadata=self._metadata(tenant),
            )
        except grpc.aio.AioRpcError as exc:
            raise downstream_error(exc, "snapshot store") from exc
        return response.created

    async def remove_ref(self, digest: str, ref_name: str, *, tenant: str | None = None) -> bool:
        """Removes the tenant's reference; False if it had none of that name."""
        try:
            response: pb.RemoveRefResponse = await self._stub.RemoveRef(
                pb.RemoveRefRequest(digest=digest, ref_name=ref_name),
                timeout=self._timeout,
                metadata=self._metadata(tenant),
            )
        except grpc.aio.AioRpcError as exc:
            raise downstream_error(exc, "snapshot store") from exc
        return response.removed

    async def usage(self, *, tenant: str | None = None) -> pb.GetUsageResponse:
        """The tenant's charged bytes, object and reference counts, and quota."""
        try:
            response: pb.GetUsageResponse = await self._stub.GetUsage(
                pb.GetUsageRequest(), timeout=self._timeout, metadata=self._metadata(tenant)
            )
        except grpc.aio.AioRpcError as exc:
            raise downstream_error(exc, "snapshot store") from exc
        return response
