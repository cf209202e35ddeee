"""The store's holdings series (tensorwasm_snapshot.metrics.StoreHoldings): what the index
holds, counted at scrape time, in the exposition a scraper reads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tensorwasm_snapshot.metrics import StoreHoldings
from tensorwasm_snapshot.object_store import SnapshotStore

MIB = 1 << 20


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SnapshotStore]:
    opened = SnapshotStore.open(tmp_path / "store", gc_grace_seconds=0, max_blob_bytes=MIB)
    yield opened
    opened.close()


def exposed(holdings: StoreHoldings) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(holdings)
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_holdings_count_objects_bytes_and_refs_at_each_scrape(store: SnapshotStore) -> None:
    holdings = StoreHoldings()
    assert exposed(holdings) == {}  # nothing watched: no series

    holdings.watch(store)
    assert exposed(holdings) == {
        ("tensorwasm_snapshot_objects", ()): 0,
        ("tensorwasm_snapshot_object_bytes", (("kind", "plain"),)): 0,
        ("tensorwasm_snapshot_object_bytes", (("kind", "stored"),)): 0,
        ("tensorwasm_snapshot_refs", ()): 0,
    }

    first, _ = store.put_bytes(b"a" * 5000)
    second, _ = store.put_bytes(b"some other bytes")
    store.put_bytes(b"a" * 5000)  # the same object again: still one
    store.add_ref("alpha", first.digest, "one")
    store.add_ref("beta", first.digest, "one")
    store.add_ref("beta", second.digest, "two")
    counted = exposed(holdings)
    assert counted[("tensorwasm_snapshot_objects", ())] == 2
    assert counted[("tensorwasm_snapshot_object_bytes", (("kind", "plain"),))] == 5016
    assert counted[("tensorwasm_snapshot_object_bytes", (("kind", "stored"),))] == (
        first.stored_size_bytes + second.stored_size_bytes
    )
    assert counted[("tensorwasm_snapshot_refs", ())] == 3

    store.remove_ref("beta", second.digest, "two")
    store.collect_garbage()  # no grace: the unreferenced object goes now
    after = exposed(holdings)
    assert after[("tensorwasm_snapshot_objects", ())] == 1
    assert after[("tensorwasm_snapshot_refs", ())] == 2


def test_a_closed_store_yields_no_series_instead_of_failing_the_scrape(
    tmp_path: Path,
) -> None:
    store = SnapshotStore.open(tmp_path / "closed", gc_grace_seconds=0, max_blob_bytes=MIB)
    holdings = StoreHoldings()
    holdings.watch(store)
    store.close()
    assert exposed(holdings) == {}
