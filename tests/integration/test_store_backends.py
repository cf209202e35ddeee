"""The contract of the snapshot store's object layer, run on both blob backends (a local
directory, and an S3 bucket on a real SeaweedFS: session-scoped, a prefix per test) and
both index engines (SQLite, and a real PostgreSQL: a fresh database per test), paired.

Round trips (multipart on S3), write-once installs, verification before the first byte,
missing and damaged objects, references, quotas, garbage collection and reconciliation
behave the same on both. Time is a fake clock.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3
import pytest
from tensorwasm_common.errors import BlobIntegrityError
from tensorwasm_snapshot.backends import BlobBackend, LocalBackend, parse_blob_url
from tensorwasm_snapshot.backends.s3 import S3Backend
from tensorwasm_snapshot.blobstore import Codec
from tensorwasm_snapshot.errors import BlobNotFoundError, TenantQuotaExceededError
from tensorwasm_snapshot.object_store import GcReport, ReconcileReport, SnapshotStore

from tests.engines.seaweedfs import SeaweedFS

pytestmark = [pytest.mark.integration, pytest.mark.engines]

SECOND = 1_000_000_000
GRACE_SECONDS = 60
MIB = 1 << 20


class FakeClock:
    def __init__(self) -> None:
        self.now_ns = 1_700_000_000 * SECOND

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += round(seconds * SECOND)


@dataclass
class Backend:
    """A backend under test and raw access to what it stores, bypassing the store."""

    make: Callable[[], BlobBackend]
    raw_read: Callable[[str], bytes]
    raw_write: Callable[[str, bytes], None]
    present: Callable[[str], bool]


@pytest.fixture(scope="module")
def bucket(seaweedfs: SeaweedFS) -> str:
    return seaweedfs.create_bucket("contract")


# Each backend with one index engine: every contract test runs on both backends and both
# engines (the layers are independent; the full product would double the time for nothing).
PAIRS = [("file", "sqlite"), ("s3", "postgresql")]


@pytest.fixture(params=PAIRS, ids=["-".join(pair) for pair in PAIRS])
def pair(request: pytest.FixtureRequest) -> tuple[str, str]:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def database_url(pair: tuple[str, str], request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The index of the pair: an SQLite file, or a fresh database on the session's server."""
    if pair[1] == "sqlite":
        return f"sqlite://{tmp_path / 'index.sqlite3'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def backend(
    pair: tuple[str, str],
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Backend:
    if pair[0] == "file":
        local = LocalBackend(tmp_path / "blobs-root")
        return Backend(
            make=lambda: LocalBackend(tmp_path / "blobs-root"),
            raw_read=lambda d: local.path_of(d).read_bytes(),
            raw_write=lambda d, data: local.path_of(d).write_bytes(data),
            present=lambda d: local.path_of(d).exists(),
        )
    seaweedfs: SeaweedFS = request.getfixturevalue("seaweedfs")
    name: str = request.getfixturevalue("bucket")
    for key, value in seaweedfs.env().items():
        monkeypatch.setenv(key, value)
    location = parse_blob_url(seaweedfs.blob_url(name, prefix=secrets.token_hex(6)))
    client = seaweedfs.client()

    def make() -> BlobBackend:
        # Small parts so that a 12 MiB blob goes up as a multipart upload.
        return S3Backend(
            location, tmp_path / "tmp", multipart_threshold=5 * MIB, part_bytes=5 * MIB
        )

    probe = S3Backend(location, tmp_path / "probe")

    def present(digest: str) -> bool:
        try:
            client.head_object(Bucket=name, Key=probe.key_of(digest))
        except client.exceptions.ClientError:
            return False
        return True

    return Backend(
        make=make,
        raw_read=lambda d: client.get_object(Bucket=name, Key=probe.key_of(d))["Body"].read(),
        raw_write=lambda d, data: (
            client.put_object(Bucket=name, Key=probe.key_of(d), Body=data) and None
        ),
        present=present,
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def open_store(
    root: Path, backend: Backend, clock: FakeClock, index_url: str | None, **kwargs: int
) -> SnapshotStore:
    kwargs.setdefault("max_blob_bytes", 32 * MIB)
    return SnapshotStore.open(
        root,
        backend=backend.make(),
        index_url=index_url,
        gc_grace_seconds=GRACE_SECONDS,
        clock=clock,
        **kwargs,
    )


@pytest.fixture
def store(
    tmp_path: Path, backend: Backend, clock: FakeClock, database_url: str
) -> Iterator[SnapshotStore]:
    opened = open_store(tmp_path / "work", backend, clock, database_url)
    yield opened
    opened.close()


def read(store: SnapshotStore, digest: str) -> bytes:
    return b"".join(store.open_verified(digest))


def test_round_trip_small_and_multipart(store: SnapshotStore, backend: Backend) -> None:
    small = b"hello, object store"
    large = os.urandom(12 * MIB)  # incompressible: 3 parts of 5 MiB on S3
    for data in (small, large):
        info, deduplicated = store.put_bytes(data)
        assert (info.digest, info.size_bytes, deduplicated) == (
            blake3.blake3(data).hexdigest(),
            len(data),
            False,
        )
        assert backend.present(info.digest)
        assert store.stat(info.digest) == info
        assert read(store, info.digest) == data
        assert store.blobs.read_bytes(info.digest) == data
        assert store.blobs.codec(info.digest) == Codec.ZSTD
    assert list(store.blobs.spool_dir.iterdir()) == []  # nothing spooled is left behind


def test_a_second_put_is_deduplicated_and_never_rewrites(
    store: SnapshotStore, backend: Backend
) -> None:
    data = os.urandom(4096)
    info, _ = store.put_bytes(data)
    stored = backend.raw_read(info.digest)
    assert store.put_bytes(data) == (info, True)
    assert backend.raw_read(info.digest) == stored
    # The backend itself is write-once: another file under the same digest is refused.
    other = store.blobs.spool_dir / "other.part"
    other.write_bytes(b"not the blob")
    assert store.blobs.backend.install(other, info.digest) is False
    assert backend.raw_read(info.digest) == stored


def test_a_damaged_object_serves_no_byte_and_a_put_repairs_it(
    store: SnapshotStore, backend: Backend
) -> None:
    data = os.urandom(300_000)
    info, _ = store.put_bytes(data)
    damaged = bytearray(backend.raw_read(info.digest))
    damaged[-10] ^= 0xFF
    backend.raw_write(info.digest, bytes(damaged))
    chunks = store.open_verified(info.digest)
    with pytest.raises(BlobIntegrityError):
        next(chunks)  # the first next() verifies the whole object: nothing was served
    assert store.put_bytes(data) == (info, False)  # the damaged copy is replaced
    assert read(store, info.digest) == data


def test_a_missing_object(store: SnapshotStore) -> None:
    digest = blake3.blake3(b"never stored").hexdigest()
    with pytest.raises(BlobNotFoundError):
        store.stat(digest)
    with pytest.raises(BlobNotFoundError):
        next(store.open_verified(digest))


def test_references_quotas_and_collection(
    tmp_path: Path, backend: Backend, clock: FakeClock, database_url: str
) -> None:
    store = open_store(tmp_path / "quota", backend, clock, database_url, tenant_quota_bytes=1000)
    try:
        held, _ = store.put_bytes(b"h" * 600, tenant="acme", ref_name="functions/a")
        loose, _ = store.put_bytes(b"garbage")
        with pytest.raises(TenantQuotaExceededError):
            store.put_bytes(os.urandom(500), tenant="acme", ref_name="functions/b")
        usage = store.usage("acme")
        assert (usage.size_bytes, usage.object_count, usage.ref_count) == (600, 1, 1)
        clock.advance(GRACE_SECONDS)
        assert store.collect_garbage().deleted_count >= 1
        assert not backend.present(loose.digest) and backend.present(held.digest)
        assert store.remove_ref("acme", held.digest, "functions/a") is True
        clock.advance(GRACE_SECONDS)
        assert store.collect_garbage() == GcReport(1, 600, held.stored_size_bytes)
        assert not backend.present(held.digest)
        with pytest.raises(BlobNotFoundError):
            store.stat(held.digest)
    finally:
        store.close()


def test_reconcile_on_open(
    tmp_path: Path, backend: Backend, clock: FakeClock, database_url: str
) -> None:
    first = open_store(tmp_path / "work", backend, clock, database_url)
    kept, _ = first.put_bytes(b"kept", tenant="acme", ref_name="r")
    gone, _ = first.put_bytes(b"gone", tenant="acme", ref_name="r2")
    first.close()
    # Another writer of the same backend, with an index of its own: an object ours lacks.
    other = open_store(tmp_path / "other-work", backend, clock, None)
    unindexed, _ = other.put_bytes(b"unindexed")
    other.blobs.backend.delete(gone.digest)
    other.close()

    second = open_store(tmp_path / "work", backend, clock, database_url)
    try:
        assert second.reconcile() == ReconcileReport()  # open() did it already
        assert second.index.get(unindexed.digest) is not None
        assert second.index.get(gone.digest) is None
        assert second.usage("acme").ref_count == 1
        assert read(second, kept.digest) == b"kept"
    finally:
        second.close()
