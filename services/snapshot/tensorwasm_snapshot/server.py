"""Builds and runs the snapshot store server."""

from __future__ import annotations

import asyncio

from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as pb_grpc
from tensorwasm_common.bootstrap import ServiceHost, create_host, serve_forever

from tensorwasm_snapshot.blobstore import BlobStore
from tensorwasm_snapshot.settings import SnapshotSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SnapshotStoreService"].full_name


def build_server(settings: SnapshotSettings) -> tuple[ServiceHost, BlobStore]:
    """Opens the blob store and registers the servicer on a new server."""
    from tensorwasm_snapshot.servicer import SnapshotStoreServicer

    store = BlobStore(
        settings.data_dir,
        compression_level=settings.compression_level,
        max_blob_bytes=settings.max_blob_bytes,
        chunk_bytes=settings.chunk_bytes,
    )
    host = create_host("snapshot", settings, [SERVICE_NAME])
    pb_grpc.add_SnapshotStoreServiceServicer_to_server(SnapshotStoreServicer(store), host.server)
    return host, store


async def serve(settings: SnapshotSettings) -> None:
    """Serves until SIGTERM; NOT_SERVING while the data directory is not writable."""
    host, store = build_server(settings)

    async def healthy() -> bool:
        await asyncio.to_thread(store.check)
        return True

    await serve_forever(host, health_check=healthy)
