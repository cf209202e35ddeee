"""Snapshot records over real gRPC, through `SnapshotClient`: create/get/find/read/list/delete,
tenant isolation, fingerprint refusal, replacement, pagination, quotas and GC of the record
blob, signing, and damage on disk. Every error is checked by code and reason."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import blake3
import pytest
from tensorwasm_common.blob_client import BlobClient
from tensorwasm_common.errors import (
    FingerprintMismatchError,
    ServiceError,
    SnapshotNotFoundError,
    SnapshotSignatureError,
)
from tensorwasm_common.snapshot_client import COMPILED_MODULE, INSTANCE_IMAGE, SnapshotClient

from tests.integration.test_store_service import SnapshotProcess

pytestmark = pytest.mark.integration

T = TypeVar("T")
MIB = 1 << 20
SOURCE = blake3.blake3(b"\0asm\1\0\0\0").hexdigest()
PAYLOAD = bytes(range(256)) * 4096 + b"tail"  # 1 MiB + 4 bytes: more than one chunk
Body = Callable[[SnapshotClient, BlobClient], Awaitable[T]]


def run(service: SnapshotProcess, body: Body[T]) -> T:
    async def main() -> T:
        async with service.aio_channel() as channel:
            return await body(SnapshotClient(channel, timeout_seconds=30), BlobClient(channel))

    return asyncio.run(main())


def refused(service: SnapshotProcess, body: Body[object]) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        run(service, body)
    return caught.value


def reason(error: ServiceError) -> tuple[str, str]:
    return error.code.name, error.reason


def source(n: int) -> str:
    return blake3.blake3(n.to_bytes(8, "little")).hexdigest()


Launch = Callable[..., SnapshotProcess]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Starts snapshot processes on sub-directories of tmp_path; stops them at teardown."""
    started: list[SnapshotProcess] = []

    def start(name: str, **settings: str) -> SnapshotProcess:
        (tmp_path / name).mkdir()
        started.append(SnapshotProcess(tmp_path / name, settings))
        return started[-1].start()

    yield start
    for service in started:
        service.stop()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SnapshotProcess]:
    service = SnapshotProcess(tmp_path_factory.mktemp("records"), {"gc_grace_seconds": "0"})
    service.start()
    yield service
    service.stop()


def test_create_get_find_read_list_delete(store: SnapshotProcess) -> None:
    async def body(client: SnapshotClient, blobs: BlobClient) -> None:
        made = await client.create_snapshot(
            COMPILED_MODULE, "engine-a", SOURCE, PAYLOAD, tenant="t1"
        )
        assert made.id.startswith("snap_") and len(made.id) == 37
        assert (made.kind, made.tenant, made.engine_fingerprint, made.source_digest) == (
            COMPILED_MODULE,
            "t1",
            "engine-a",
            SOURCE,
        )
        assert made.payload_digest == blake3.blake3(PAYLOAD).hexdigest()
        assert made.payload_size_bytes == len(PAYLOAD)
        assert (made.format_version, made.signed) == (1, False)
        assert made.create_time.seconds > 1_700_000_000
        assert await client.get_snapshot(made.id, tenant="t1") == made
        assert await client.find_snapshot(COMPILED_MODULE, SOURCE, "engine-a", tenant="t1") == made
        assert await client.read_snapshot(made.id, "engine-a", tenant="t1") == PAYLOAD
        assert await client.read_snapshot(made.id, "", tenant="t1") == PAYLOAD
        page = await client.list_snapshots(tenant="t1")
        assert [s.id for s in page.snapshots] == [made.id] and page.next_page_token == ""
        # The record blob is an object the tenant references: charged, and kept from GC.
        usage = await blobs.usage(tenant="t1")
        assert (usage.size_bytes, usage.object_count) == (made.record_size_bytes, 1)
        assert await blobs.get(made.record_digest)  # collectable at once if unreferenced
        await client.delete_snapshot(made.id, tenant="t1")
        assert (await blobs.usage(tenant="t1")).object_count == 0
        with pytest.raises(SnapshotNotFoundError):
            await client.get_snapshot(made.id, tenant="t1")
        assert await client.find_snapshot(COMPILED_MODULE, SOURCE, "engine-a", tenant="t1") is None
        with pytest.raises(SnapshotNotFoundError):
            await client.delete_snapshot(made.id, tenant="t1")

    run(store, body)


def test_another_tenants_record_is_not_found(store: SnapshotProcess) -> None:
    async def body(client: SnapshotClient, blobs: BlobClient) -> None:
        made = await client.create_snapshot(
            INSTANCE_IMAGE, "e", SOURCE, b"img", variant="init", tenant="owner"
        )
        for call in (
            client.get_snapshot(made.id, tenant="intruder"),
            client.read_snapshot(made.id, "e", tenant="intruder"),
            client.delete_snapshot(made.id, tenant="intruder"),
        ):
            with pytest.raises(SnapshotNotFoundError) as caught:
                await call
            assert reason(caught.value) == ("NOT_FOUND", "SNAPSHOT_NOT_FOUND")
        found = await client.find_snapshot(
            INSTANCE_IMAGE, SOURCE, "e", variant="init", tenant="intruder"
        )
        assert found is None
        assert list((await client.list_snapshots(tenant="intruder")).snapshots) == []
        assert await client.read_snapshot(made.id, "e", tenant="owner") == b"img"

    run(store, body)


def test_another_engine_fingerprint_is_refused(store: SnapshotProcess) -> None:
    async def body(client: SnapshotClient, blobs: BlobClient) -> None:
        made = await client.create_snapshot(
            COMPILED_MODULE, "engine-a", source(1), b"x", tenant="fp"
        )
        with pytest.raises(FingerprintMismatchError) as caught:
            await client.find_snapshot(COMPILED_MODULE, source(1), "engine-b", tenant="fp")
        assert reason(caught.value) == ("FAILED_PRECONDITION", "ENGINE_FINGERPRINT_MISMATCH")
        assert caught.value.metadata == {"expected": "engine-b", "actual": "engine-a"}
        with pytest.raises(FingerprintMismatchError):
            await client.read_snapshot(made.id, "engine-b", tenant="fp")
        # Once engine-b has its own record, each engine finds its own.
        other = await client.create_snapshot(
            COMPILED_MODULE, "engine-b", source(1), b"y", tenant="fp"
        )
        assert (
            await client.find_snapshot(COMPILED_MODULE, source(1), "engine-b", tenant="fp")
        ) == other
        assert (
            await client.find_snapshot(COMPILED_MODULE, source(1), "engine-a", tenant="fp")
        ) == made

    run(store, body)


def test_creating_again_replaces_and_releases_the_old_record(store: SnapshotProcess) -> None:
    async def body(client: SnapshotClient, blobs: BlobClient) -> None:
        first = await client.create_snapshot(COMPILED_MODULE, "e", source(2), b"old", tenant="re")
        second = await client.create_snapshot(COMPILED_MODULE, "e", source(2), b"new", tenant="re")
        assert second.id != first.id
        with pytest.raises(SnapshotNotFoundError):
            await client.get_snapshot(first.id, tenant="re")
        assert await client.read_snapshot(second.id, "e", tenant="re") == b"new"
        usage = await blobs.usage(tenant="re")
        assert (usage.object_count, usage.ref_count) == (1, 1)

    run(store, body)


def test_pages_are_newest_first_and_complete(store: SnapshotProcess) -> None:
    async def body(client: SnapshotClient, blobs: BlobClient) -> None:
        made = [
            await client.create_snapshot(
                COMPILED_MODULE, "e", source(100 + i), b"p", tenant="pages"
            )
            for i in range(5)
        ]
        await client.create_snapshot(INSTANCE_IMAGE, "e", source(100), b"i", tenant="pages")
        seen, token, pages = [], "", 0
        while True:
            page = await client.list_snapshots(
                kind=COMPILED_MODULE, page_size=2, page_token=token, tenant="pages"
            )
            seen += [s.id for s in page.snapshots]
            pages += 1
            token = page.next_page_token
            if not token:
                break
            # A token is bound to its filters.
            with pytest.raises(ServiceError) as caught:
                await client.list_snapshots(page_token=token, tenant="pages")
            assert reason(caught.value) == ("INVALID_ARGUMENT", "INVALID_PAGE_TOKEN")
        assert pages == 3
        assert seen == [s.id for s in reversed(made)]
        only = await client.list_snapshots(source_digest=source(100), tenant="pages")
        assert len(only.snapshots) == 2

    run(store, body)


def test_bad_requests(store: SnapshotProcess) -> None:
    def make(**kwargs: object) -> Body[object]:
        args: dict[str, object] = {"kind": COMPILED_MODULE, "fp": "e", "src": SOURCE}
        args.update(kwargs)

        async def body(client: SnapshotClient, blobs: BlobClient) -> object:
            return await client.create_snapshot(args["kind"], args["fp"], args["src"], b"z")  # type: ignore[arg-type]

        return body

    assert reason(refused(store, make(kind=0))) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert reason(refused(store, make(fp=""))) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert reason(refused(store, make(src="nope"))) == ("INVALID_ARGUMENT", "INVALID_DIGEST")

    async def bad_id(client: SnapshotClient, blobs: BlobClient) -> object:
        return await client.get_snapshot("snap_nothex")

    assert reason(refused(store, bad_id)) == ("INVALID_ARGUMENT", "INVALID_NAME")


def test_quota_covers_records(launch: Launch) -> None:
    service = launch("quota", tenant_quota_bytes=str(MIB))

    async def body(client: SnapshotClient, blobs: BlobClient) -> None:
        noise = blake3.blake3(b"seed").digest(length=2 * MIB)  # incompressible
        with pytest.raises(ServiceError) as caught:
            await client.create_snapshot(COMPILED_MODULE, "e", SOURCE, noise, tenant="q")
        assert reason(caught.value) == ("RESOURCE_EXHAUSTED", "TENANT_QUOTA_EXCEEDED")
        assert list((await client.list_snapshots(tenant="q")).snapshots) == []
        assert (await blobs.usage(tenant="q")).object_count == 0

    run(service, body)


def test_signed_records_and_key_checks(launch: Launch, tmp_path: Path) -> None:
    key_a, key_b = tmp_path / "a.key", tmp_path / "b.key"
    key_a.write_bytes(b"a" * 32 + b"\n")
    key_b.write_bytes(b"b" * 40)
    unsigned = launch("sig")

    async def create(client: SnapshotClient, blobs: BlobClient) -> str:
        made = await client.create_snapshot(COMPILED_MODULE, "e", source(7), b"plain")
        return made.id

    unsigned_id = run(unsigned, create)
    unsigned.stop()
    signed = SnapshotProcess(unsigned.data_dir, {"signing_key_file": str(key_a)}).start()

    async def with_key_a(client: SnapshotClient, blobs: BlobClient) -> str:
        with pytest.raises(SnapshotSignatureError) as caught:
            await client.read_snapshot(unsigned_id, "e")
        assert reason(caught.value) == ("DATA_LOSS", "SNAPSHOT_SIGNATURE_INVALID")
        assert "unsigned" in caught.value.message
        made = await client.create_snapshot(COMPILED_MODULE, "e", source(8), b"signed")
        assert made.signed
        assert await client.read_snapshot(made.id, "e") == b"signed"
        return made.id

    signed_id = run(signed, with_key_a)
    signed.stop()
    other = SnapshotProcess(unsigned.data_dir, {"signing_key_file": str(key_b)}).start()

    async def with_key_b(client: SnapshotClient, blobs: BlobClient) -> None:
        with pytest.raises(SnapshotSignatureError) as caught:
            await client.read_snapshot(signed_id, "e")
        assert "does not verify" in caught.value.message

    try:
        run(other, with_key_b)
    finally:
        other.stop()


def test_damaged_record_blob_is_never_served(launch: Launch) -> None:
    service = launch("damage")

    async def create(client: SnapshotClient, blobs: BlobClient) -> tuple[str, str]:
        made = await client.create_snapshot(COMPILED_MODULE, "e", SOURCE, PAYLOAD)
        return made.id, made.record_digest

    snapshot_id, record_digest = run(service, create)
    path = service.blob_path(record_digest)
    damaged = bytearray(path.read_bytes())
    damaged[-100] ^= 0xFF
    path.write_bytes(bytes(damaged))

    async def read(client: SnapshotClient, blobs: BlobClient) -> bytes:
        return await client.read_snapshot(snapshot_id, "e")

    assert reason(refused(service, read)) == ("DATA_LOSS", "BLOB_INTEGRITY")
