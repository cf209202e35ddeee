"""Tests of the snapshot store's references, quotas, garbage collection and recovery.

Time is a fake clock: grace periods pass by moving it, never by sleeping.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest
from tensorwasm_common.errors import (
    BlobIntegrityError,
    Code,
    InvalidDigestError,
    InvalidNameError,
    TooLargeError,
)
from tensorwasm_snapshot.errors import BlobNotFoundError, TenantQuotaExceededError
from tensorwasm_snapshot.object_store import GcReport, ReconcileReport, SnapshotStore

SECOND = 1_000_000_000
GRACE_SECONDS = 60
GRACE = GRACE_SECONDS * SECOND
MIB = 1 << 20


class FakeClock:
    """Nanoseconds since the epoch, moved by hand."""

    def __init__(self) -> None:
        self.now_ns = 1_700_000_000 * SECOND

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += round(seconds * SECOND)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def open_store(root: Path, clock: FakeClock, **kwargs: int) -> SnapshotStore:
    kwargs.setdefault("max_blob_bytes", 16 * MIB)
    return SnapshotStore.open(root, gc_grace_seconds=GRACE_SECONDS, clock=clock, **kwargs)


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[SnapshotStore]:
    opened = open_store(tmp_path / "store", clock)
    yield opened
    opened.close()


@pytest.fixture
def quota_store(tmp_path: Path, clock: FakeClock) -> Iterator[SnapshotStore]:
    opened = open_store(tmp_path / "quota", clock, tenant_quota_bytes=1000)
    yield opened
    opened.close()


def tmp_files(store: SnapshotStore) -> list[Path]:
    return sorted((store.blobs.root / "tmp").iterdir())


def stored(store: SnapshotStore, digest: str) -> bool:
    return store.blobs.path_of(digest).exists() and store.index.get(digest) is not None


def usage(store: SnapshotStore, tenant: str) -> tuple[int, int, int]:
    got = store.usage(tenant)
    return got.size_bytes, got.object_count, got.ref_count


# --- garbage collection and the grace period ---


def test_unreferenced_object_is_collected_after_the_grace_period(
    store: SnapshotStore, clock: FakeClock
) -> None:
    info, _ = store.put_bytes(b"no one holds me")
    record = store.index.get(info.digest)
    assert record is not None
    assert record.create_time_ns == record.touch_time_ns == clock.now_ns

    clock.advance(GRACE_SECONDS - 1)
    assert store.collect_garbage() == GcReport()
    assert stored(store, info.digest)

    clock.advance(1)
    assert store.collect_garbage() == GcReport(1, info.size_bytes, info.stored_size_bytes)
    assert not stored(store, info.digest)
    with pytest.raises(BlobNotFoundError):
        store.stat(info.digest)
    assert store.collect_garbage() == GcReport()


def test_referenced_object_is_kept_until_its_last_ref_is_released(
    store: SnapshotStore, clock: FakeClock
) -> None:
    info, _ = store.put_bytes(b"held twice", tenant="acme", ref_name="functions/a")
    assert store.add_ref("other", info.digest, "snapshots/s1") == (info, True)
    clock.advance(10 * GRACE_SECONDS)
    assert store.collect_garbage() == GcReport()

    assert store.remove_ref("acme", info.digest, "functions/a") is True
    clock.advance(10 * GRACE_SECONDS)
    assert store.collect_garbage() == GcReport()

    assert store.remove_ref("other", info.digest, "snapshots/s1") is True
    clock.advance(GRACE_SECONDS - 1)  # the grace runs from the release, not from the put
    assert store.collect_garbage() == GcReport()
    clock.advance(1)
    assert store.collect_garbage().deleted_count == 1
    assert not stored(store, info.digest)


def test_a_deduplicated_put_restarts_the_grace_period(
    store: SnapshotStore, clock: FakeClock
) -> None:
    info, _ = store.put_bytes(b"put twice")
    clock.advance(GRACE_SECONDS - 1)
    assert store.put_bytes(b"put twice") == (info, True)
    clock.advance(GRACE_SECONDS - 1)
    assert store.collect_garbage() == GcReport()  # a put followed by AddRef is not raced
    assert store.add_ref("acme", info.digest, "late")[1] is True
    clock.advance(10 * GRACE_SECONDS)
    assert store.collect_garbage() == GcReport()


def test_put_then_add_ref_within_the_grace_period(store: SnapshotStore, clock: FakeClock) -> None:
    info, _ = store.put_bytes(os.urandom(5000))
    clock.advance(GRACE_SECONDS - 1)
    store.add_ref("acme", info.digest, "keep")
    clock.advance(GRACE_SECONDS)
    assert store.collect_garbage() == GcReport()
    assert store.open_verified(info.digest) is not None


def test_collection_only_takes_what_is_due(store: SnapshotStore, clock: FakeClock) -> None:
    old, _ = store.put_bytes(b"old")
    held, _ = store.put_bytes(b"held", tenant="acme", ref_name="r")
    clock.advance(GRACE_SECONDS)
    young, _ = store.put_bytes(b"young")
    assert store.collect_garbage().deleted_count == 1
    assert [stored(store, i.digest) for i in (old, held, young)] == [False, True, True]


def test_grace_zero_collects_at_once(tmp_path: Path, clock: FakeClock) -> None:
    store = SnapshotStore.open(tmp_path, gc_grace_seconds=0, clock=clock)
    info, _ = store.put_bytes(b"short-lived")
    assert store.collect_garbage().deleted_count == 1
    assert not stored(store, info.digest)
    store.close()


def test_a_put_racing_the_collector_keeps_its_blob(store: SnapshotStore, clock: FakeClock) -> None:
    # The collector deletes under the digest's install lock: a put of the same bytes that
    # arrives meanwhile waits, then stores the blob again instead of deduplicating against
    # a file that is about to be unlinked.
    data = os.urandom(100_000)
    info, _ = store.put_bytes(data)
    clock.advance(GRACE_SECONDS)
    results: list[tuple[object, bool]] = []
    putter = threading.Thread(target=lambda: results.append(store.put_bytes(data)))
    forget = store.index.forget_if_collectable

    def forget_while_a_put_arrives(digest: str, cutoff_ns: int) -> object:
        putter.start()
        putter.join(timeout=0.2)
        assert putter.is_alive()  # blocked on the lock the collector holds
        return forget(digest, cutoff_ns)

    store.index.forget_if_collectable = forget_while_a_put_arrives  # type: ignore[method-assign]
    assert store.collect_garbage().deleted_count == 1
    putter.join()
    assert results == [(info, False)]
    assert stored(store, info.digest)
    assert b"".join(store.open_verified(info.digest)) == data


# --- references ---


def test_add_ref_is_idempotent_and_charges_once_per_object(store: SnapshotStore) -> None:
    info, _ = store.put_bytes(b"x" * 300)
    other, _ = store.put_bytes(b"y" * 50)
    assert store.add_ref("acme", info.digest, "functions/a") == (info, True)
    assert store.add_ref("acme", info.digest, "functions/a") == (info, False)
    assert store.add_ref("acme", info.digest, "functions/b") == (info, True)
    assert usage(store, "acme") == (300, 1, 2)
    store.add_ref("acme", other.digest, "functions/c")
    assert usage(store, "acme") == (350, 2, 3)
    store.add_ref("globex", info.digest, "functions/a")  # each tenant is charged in full
    assert usage(store, "globex") == (300, 1, 1)
    assert usage(store, "nobody") == (0, 0, 0)


def test_remove_ref(store: SnapshotStore) -> None:
    info, _ = store.put_bytes(b"z" * 10, tenant="acme", ref_name="a")
    store.add_ref("acme", info.digest, "b")
    assert store.remove_ref("acme", info.digest, "missing") is False
    assert store.remove_ref("globex", info.digest, "a") is False
    assert store.remove_ref("acme", info.digest, "a") is True
    assert store.remove_ref("acme", info.digest, "a") is False
    assert usage(store, "acme") == (10, 1, 1)
    assert store.remove_ref("acme", info.digest, "b") is True
    assert usage(store, "acme") == (0, 0, 0)


def test_add_ref_to_an_unknown_object(store: SnapshotStore) -> None:
    digest = blake3.blake3(b"never stored").hexdigest()
    with pytest.raises(BlobNotFoundError) as caught:
        store.add_ref("acme", digest, "r")
    assert (caught.value.code, caught.value.reason) == (Code.NOT_FOUND, "BLOB_NOT_FOUND")
    assert usage(store, "acme") == (0, 0, 0)


@pytest.mark.parametrize(
    ("tenant", "ref_name", "field"),
    [
        ("", "r", "tenant"),
        ("Acme", "r", "tenant"),
        ("a" * 64, "r", "tenant"),
        ("acme", "", "ref_name"),
        ("acme", "/leading-slash", "ref_name"),
        ("acme", "new\nline", "ref_name"),
        ("acme", "r" * 257, "ref_name"),
    ],
)
def test_invalid_names(store: SnapshotStore, tenant: str, ref_name: str, field: str) -> None:
    info, _ = store.put_bytes(b"named")
    calls = [
        lambda: store.add_ref(tenant, info.digest, ref_name),
        lambda: store.remove_ref(tenant, info.digest, ref_name),
        lambda: store.writer(tenant=tenant, ref_name=ref_name),
    ]
    for call in calls:
        with pytest.raises(InvalidNameError) as caught:
            call()
        assert (caught.value.code, caught.value.reason) == (Code.INVALID_ARGUMENT, "INVALID_NAME")
        assert caught.value.metadata["field"] == field
    assert tmp_files(store) == []


def test_valid_names(store: SnapshotStore) -> None:
    info, _ = store.put_bytes(b"named")
    for name in ("functions/add", "snapshots/a1@sm_80", "r" * 256, "v1.2:x+y=z~_-"):
        assert store.add_ref("t_0-x", info.digest, name)[1] is True


def test_malformed_digest_in_refs(store: SnapshotStore) -> None:
    for call in (store.add_ref, store.remove_ref):
        with pytest.raises(InvalidDigestError):
            call("acme", "A" * 64, "r")


def test_refs_survive_a_reopen(tmp_path: Path, clock: FakeClock) -> None:
    first = open_store(tmp_path, clock)
    first.put_bytes(b"durable", tenant="acme", ref_name="r")
    first.close()
    second = open_store(tmp_path, clock)
    assert usage(second, "acme") == (7, 1, 1)
    clock.advance(10 * GRACE_SECONDS)
    assert second.collect_garbage() == GcReport()
    second.close()


# --- quotas (quota_store: 1000 bytes per tenant) ---


def test_quota_refuses_the_reference_that_would_pass_it(quota_store: SnapshotStore) -> None:
    first, _ = quota_store.put_bytes(b"a" * 600, tenant="acme", ref_name="first")
    second, _ = quota_store.put_bytes(b"b" * 600)
    with pytest.raises(TenantQuotaExceededError) as caught:
        quota_store.add_ref("acme", second.digest, "second")
    assert (caught.value.code, caught.value.reason) == (
        Code.RESOURCE_EXHAUSTED,
        "TENANT_QUOTA_EXCEEDED",
    )
    assert caught.value.metadata == {
        "tenant": "acme",
        "quota_bytes": "1000",
        "usage_bytes": "600",
        "requested_bytes": "600",
    }
    assert usage(quota_store, "acme") == (600, 1, 1)
    # Another name for an object it already holds costs nothing; other tenants are unaffected.
    assert quota_store.add_ref("acme", first.digest, "alias")[1] is True
    assert quota_store.add_ref("globex", second.digest, "second")[1] is True
    # Exactly at the quota is allowed.
    third, _ = quota_store.put_bytes(b"c" * 400, tenant="acme", ref_name="third")
    assert usage(quota_store, "acme") == (1000, 2, 3)
    quota_store.remove_ref("acme", third.digest, "third")
    assert usage(quota_store, "acme") == (600, 1, 2)


def test_declared_size_over_quota_is_refused_before_writing(quota_store: SnapshotStore) -> None:
    with pytest.raises(TenantQuotaExceededError) as caught:
        quota_store.writer(expected_size=1001, tenant="acme", ref_name="big")
    assert caught.value.metadata["requested_bytes"] == "1001"
    assert tmp_files(quota_store) == []
    # Without a reference the upload is not charged: only the object cap applies.
    with quota_store.writer(expected_size=1001) as writer:
        writer.write(b"d" * 1001)
        info, _ = writer.commit()
    assert usage(quota_store, "acme") == (0, 0, 0)
    assert stored(quota_store, info.digest)


def test_undeclared_upload_stops_at_the_remaining_quota(quota_store: SnapshotStore) -> None:
    quota_store.put_bytes(b"e" * 700, tenant="acme", ref_name="first")
    data = os.urandom(400)
    writer = quota_store.writer(tenant="acme", ref_name="second")
    writer.write(data[:300])
    with pytest.raises(TenantQuotaExceededError) as caught:
        writer.write(data[300:])
    assert caught.value.metadata["usage_bytes"] == "700"
    assert caught.value.metadata["requested_bytes"] == "400"
    assert tmp_files(quota_store) == []
    assert not quota_store.blobs.path_of(blake3.blake3(data).hexdigest()).exists()
    assert usage(quota_store, "acme") == (700, 1, 1)


def test_re_putting_a_held_object_at_quota_with_its_digest(quota_store: SnapshotStore) -> None:
    data = b"f" * 1000
    digest = blake3.blake3(data).hexdigest()
    quota_store.put_bytes(data, tenant="acme", ref_name="first")
    with quota_store.writer(expected_digest=digest, tenant="acme", ref_name="again") as writer:
        writer.write(data)
        assert writer.commit()[1] is True
    assert usage(quota_store, "acme") == (1000, 1, 2)


def test_quota_race_at_commit_leaves_only_collectable_bytes(
    quota_store: SnapshotStore, clock: FakeClock
) -> None:
    other, _ = quota_store.put_bytes(b"g" * 600)
    writer = quota_store.writer(tenant="acme", ref_name="racer")  # budget: 1000
    writer.write(b"h" * 600)
    quota_store.add_ref("acme", other.digest, "winner")  # a concurrent reference wins
    with pytest.raises(TenantQuotaExceededError):
        writer.commit()
    assert usage(quota_store, "acme") == (600, 1, 1)
    assert tmp_files(quota_store) == []
    clock.advance(GRACE_SECONDS)
    assert quota_store.collect_garbage().deleted_count == 1  # the loser's unreferenced bytes


def test_unlimited_quota(store: SnapshotStore) -> None:
    assert store.tenant_quota_bytes == 0
    store.put_bytes(os.urandom(3 * MIB), tenant="acme", ref_name="big")
    assert store.usage("acme").size_bytes == 3 * MIB


def test_size_cap_comes_before_quota(quota_store: SnapshotStore) -> None:
    with pytest.raises(TooLargeError):
        quota_store.writer(expected_size=17 * MIB, tenant="acme", ref_name="r")
    assert tmp_files(quota_store) == []


# --- reconcile on open ---


def test_reconcile_indexes_files_the_index_lacks(tmp_path: Path, clock: FakeClock) -> None:
    first = open_store(tmp_path, clock)
    info, _ = first.blobs.put_bytes(b"installed, then the process died")  # no index row
    first.close()
    clock.advance(5 * GRACE_SECONDS)
    second = open_store(tmp_path, clock)
    record = second.index.get(info.digest)
    assert record is not None and record.info == info
    assert record.touch_time_ns == clock.now_ns  # the grace starts now, not at its mtime
    clock.advance(GRACE_SECONDS)
    assert second.collect_garbage().deleted_count == 1
    second.close()


def test_reconcile_drops_rows_whose_file_is_gone(tmp_path: Path, clock: FakeClock) -> None:
    first = open_store(tmp_path, clock)
    gone, _ = first.put_bytes(b"deleted behind our back", tenant="acme", ref_name="r")
    kept, _ = first.put_bytes(b"kept", tenant="acme", ref_name="k")
    first.close()
    first.blobs.path_of(gone.digest).unlink()
    second = open_store(tmp_path, clock)
    assert second.index.get(gone.digest) is None
    assert usage(second, "acme") == (4, 1, 1)
    assert second.reconcile() == ReconcileReport()
    assert b"".join(second.open_verified(kept.digest)) == b"kept"
    second.close()


def test_reconcile_leaves_damaged_unindexed_files_alone(tmp_path: Path, clock: FakeClock) -> None:
    first = open_store(tmp_path, clock)
    info, _ = first.blobs.put_bytes(os.urandom(1000))
    first.close()
    path = first.blobs.path_of(info.digest)
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    second = open_store(tmp_path, clock)
    assert second.index.get(info.digest) is None
    assert path.exists()
    with pytest.raises(BlobIntegrityError):
        second.blobs.verify(info.digest)
    assert second.reconcile() == ReconcileReport(damaged=1)
    second.close()


def test_reconcile_removes_orphan_temp_files_and_ignores_strays(
    tmp_path: Path, clock: FakeClock
) -> None:
    first = open_store(tmp_path, clock)
    info, _ = first.put_bytes(b"whole")
    first.close()
    (tmp_path / "tmp" / "blob-crashed.part").write_bytes(b"half an upload")
    (tmp_path / "blobs" / "README").write_text("not a blob")
    (tmp_path / "blobs" / info.digest[:2] / "not-a-digest").write_text("stray")
    second = open_store(tmp_path, clock)
    assert tmp_files(second) == []
    assert second.index.digests() == {info.digest}
    assert second.reconcile() == ReconcileReport()
    second.close()


def test_index_settings(store: SnapshotStore) -> None:
    db = sqlite3.connect(store.blobs.root / "index.sqlite3")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA user_version").fetchone() == (2,)  # 2: the snapshots table
    finally:
        db.close()


def test_check(store: SnapshotStore) -> None:
    store.check()
    store.close()
    with pytest.raises(sqlite3.ProgrammingError):
        store.check()


def test_invalid_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SnapshotStore.open(tmp_path, gc_grace_seconds=-1)
    with pytest.raises(ValueError):
        SnapshotStore.open(tmp_path, tenant_quota_bytes=-1)
