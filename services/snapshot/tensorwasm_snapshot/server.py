"""Builds and runs the snapshot store server, with its periodic garbage collection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys

from grpc_health.v1 import health_pb2
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as pb_grpc
from tensorwasm_common.bootstrap import ServiceHost, create_host, serve_forever
from tensorwasm_common.database import DatabaseStartError

from tensorwasm_snapshot.backends import BlobLocationError, open_backend
from tensorwasm_snapshot.metrics import STORE_HOLDINGS, collect_garbage
from tensorwasm_snapshot.object_store import SnapshotStore
from tensorwasm_snapshot.records import SnapshotRecords
from tensorwasm_snapshot.settings import SnapshotSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SnapshotStoreService"].full_name
# A health name of its own: NOT_SERVING while the index failed its check at start (the store
# still serves and stores; it does not collect garbage until the index is rebuilt).
INDEX_HEALTH_NAME = SERVICE_NAME + ".index"

_log = logging.getLogger(__name__)


def build_server(settings: SnapshotSettings) -> tuple[ServiceHost, SnapshotStore]:
    """Opens (and reconciles) the store and its records; registers the servicer.

    Raises:
        BlobLocationError: the blob URL's backend cannot be reached or used.
        DatabaseStartError: the index's database cannot be opened.
    """
    from tensorwasm_snapshot.servicer import SnapshotStoreServicer

    backend = open_backend(settings.resolved_blob_url, settings.data_dir)
    store = SnapshotStore.open(
        settings.data_dir,
        backend=backend,
        index_url=settings.resolved_database_url,
        compression_level=settings.compression_level,
        max_blob_bytes=settings.max_blob_bytes,
        chunk_bytes=settings.chunk_bytes,
        gc_grace_seconds=settings.gc_grace_seconds,
        tenant_quota_bytes=settings.tenant_quota_bytes,
    )
    try:
        records = SnapshotRecords(store, signing_key=settings.signing_key())
        records.reconcile()
    except BaseException:
        store.close()
        raise
    host = create_host("snapshot", settings, [SERVICE_NAME])
    servicer = SnapshotStoreServicer(store, records)
    pb_grpc.add_SnapshotStoreServiceServicer_to_server(servicer, host.server)
    STORE_HOLDINGS.watch(store)
    return host, store


async def sweep_periodically(store: SnapshotStore, interval_seconds: float) -> None:
    """Collects garbage every `interval_seconds` until cancelled; a failed sweep is logged."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            await asyncio.to_thread(collect_garbage, store)
        except Exception:
            _log.exception("garbage collection failed")


async def serve(settings: SnapshotSettings) -> None:
    """Serves until SIGTERM; NOT_SERVING while the blob backend or index is unusable.

    A blob URL or database URL that cannot be reached at start stops the process (exit
    status 2) with a message naming the setting.
    """
    try:
        host, store = build_server(settings)
    except (BlobLocationError, DatabaseStartError) as exc:
        _log.error("cannot open the blob store: %s", exc)
        print(f"tensorwasm-snapshot: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    await host.health.set(
        INDEX_HEALTH_NAME,
        health_pb2.HealthCheckResponse.NOT_SERVING
        if store.index_problems
        else health_pb2.HealthCheckResponse.SERVING,
    )
    sweeper = None
    if settings.gc_interval_seconds > 0:
        sweeper = asyncio.create_task(sweep_periodically(store, settings.gc_interval_seconds))

    async def healthy() -> bool:
        await asyncio.to_thread(store.check)
        return True

    async def cleanup() -> None:
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        STORE_HOLDINGS.watch(None)
        store.close()

    await serve_forever(host, health_check=healthy, cleanup=cleanup)
