"""The store's Prometheus series: blobs and bytes put, garbage collection runs and what
they deleted."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge

from tensorwasm_snapshot.blobstore import BlobInfo
from tensorwasm_snapshot.object_store import GcReport, SnapshotStore

BLOBS_PUT = Counter(
    "tensorwasm_snapshot_blobs_put",
    "Blobs committed, by outcome (stored: new bytes; deduplicated: already held).",
    ["outcome"],
)
PUT_BYTES = Counter(
    "tensorwasm_snapshot_put_bytes",
    "Bytes of the blobs committed (plaintext size; stored: size at rest after compression).",
    ["kind"],
)
GC_RUNS = Counter("tensorwasm_snapshot_gc_runs", "Garbage collections, by outcome.", ["outcome"])
GC_DELETED_OBJECTS = Counter(
    "tensorwasm_snapshot_gc_deleted_objects", "Objects garbage collection deleted."
)
GC_DELETED_BYTES = Counter(
    "tensorwasm_snapshot_gc_deleted_bytes", "Bytes at rest garbage collection freed."
)
GC_LAST_SUCCESS = Gauge(
    "tensorwasm_snapshot_gc_last_success_timestamp_seconds",
    "When garbage collection last finished without error (Unix time; 0: never).",
)


def record_put(info: BlobInfo, deduplicated: bool) -> None:
    """Counts one committed blob."""
    BLOBS_PUT.labels("deduplicated" if deduplicated else "stored").inc()
    PUT_BYTES.labels("plain").inc(info.size_bytes)
    if not deduplicated:
        PUT_BYTES.labels("stored").inc(info.stored_size_bytes)


def collect_garbage(store: SnapshotStore) -> GcReport:
    """Runs one garbage collection on `store` and records it (a failure too)."""
    try:
        report = store.collect_garbage()
    except Exception:
        GC_RUNS.labels("failed").inc()
        raise
    GC_RUNS.labels("ok").inc()
    GC_DELETED_OBJECTS.inc(report.deleted_count)
    GC_DELETED_BYTES.inc(report.deleted_stored_size_bytes)
    GC_LAST_SUCCESS.set(time.time())
    return report
