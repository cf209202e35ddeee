"""The store's Prometheus series: blobs and bytes put, garbage collection runs and what
they deleted, and what it holds (read from its index at each scrape)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

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


_log = logging.getLogger(__name__)


class StoreHoldings(Collector):
    """`tensorwasm_snapshot_objects`, `_object_bytes{kind}` (plain, stored) and `_refs`:
    what the store's index holds, counted when scraped (nothing before `watch`)."""

    def __init__(self) -> None:
        self._store: SnapshotStore | None = None

    def watch(self, store: SnapshotStore | None) -> None:
        """Reports `store`'s holdings from now on (None: nothing)."""
        self._store = store

    def collect(self) -> Iterator[Metric]:
        store = self._store
        if store is None:
            return
        try:
            totals = store.totals()
        except Exception:  # a scrape must not fail the store; the index has its own health
            _log.warning("cannot count the store's holdings", exc_info=True)
            return
        yield GaugeMetricFamily(
            "tensorwasm_snapshot_objects", "Objects held (distinct blobs).",
            value=totals.object_count,
        )  # fmt: skip
        held = GaugeMetricFamily(
            "tensorwasm_snapshot_object_bytes",
            "Bytes of the objects held, by kind (plain: plaintext; stored: at rest).",
            labels=["kind"],
        )
        held.add_metric(["plain"], totals.size_bytes)
        held.add_metric(["stored"], totals.stored_size_bytes)
        yield held
        yield GaugeMetricFamily(
            "tensorwasm_snapshot_refs", "References tenants hold to objects.",
            value=totals.ref_count,
        )  # fmt: skip


STORE_HOLDINGS = StoreHoldings()
REGISTRY.register(STORE_HOLDINGS)


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
