"""Unit tests for tensorwasm_executor.images.image_provider: where an image comes from, and
that init runs once. The snapshot store is an in-memory fake of the SnapshotClient calls used."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import pytest
import wasmtime
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as snapshot_pb
from tensorwasm_common.errors import FingerprintMismatchError, UnavailableError
from tensorwasm_executor.errors import InitFailedError
from tensorwasm_executor.images.image_provider import INSTANCE_IMAGE, ImageProvider
from tensorwasm_executor.wasm.instance_image import InstanceImage
from tensorwasm_executor.wasm.sandbox import CompiledModule, Sandbox
from tensorwasm_executor.wasm.values import ValueType, WasmValue

INIT = "wizer.initialize"


class FakeRecords:
    """Snapshot records keyed as the store keys them; `fail` makes every call raise it."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, int, str, str, str], bytes] = {}
        self.fail: Exception | None = None
        self.mismatch = False

    async def find_snapshot(
        self,
        kind: snapshot_pb.SnapshotKind.ValueType,
        source_digest: str,
        engine_fingerprint: str,
        *,
        variant: str = "",
        tenant: str | None = None,
    ) -> snapshot_pb.Snapshot | None:
        if self.fail is not None:
            raise self.fail
        if self.mismatch:
            raise FingerprintMismatchError("made by another engine")
        key = (tenant or "", kind, engine_fingerprint, source_digest, variant)
        if key not in self.records:
            return None
        return snapshot_pb.Snapshot(id="|".join(map(str, key)))

    async def read_snapshot(
        self, snapshot_id: str, expected_engine_fingerprint: str, *, tenant: str | None = None
    ) -> bytes:
        tenant_, kind, fingerprint, digest, variant = snapshot_id.split("|")
        return self.records[(tenant_, int(kind), fingerprint, digest, variant)]

    async def create_snapshot(
        self,
        kind: snapshot_pb.SnapshotKind.ValueType,
        engine_fingerprint: str,
        source_digest: str,
        payload: bytes,
        *,
        variant: str = "",
        tenant: str | None = None,
    ) -> snapshot_pb.Snapshot:
        if self.fail is not None:
            raise self.fail
        self.records[(tenant or "", kind, engine_fingerprint, source_digest, variant)] = payload
        return snapshot_pb.Snapshot(id="x")


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as box:
        yield box


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as executor:
        yield executor


def stamp(sandbox: Sandbox, module: CompiledModule, image: object) -> int:
    outcome = sandbox.invoke(module, "stamp", [], image=image)  # type: ignore[arg-type]
    assert outcome.results is not None
    payload = outcome.results[0].payload
    assert isinstance(payload, int)
    return payload


class Setup:
    def __init__(self, sandbox: Sandbox, wasm: bytes) -> None:
        self.wasm = wasm
        self.digest = blake3.blake3(wasm).hexdigest()
        self.module = sandbox.compile(self.digest, wasm)
        self.fetches = 0

    async def fetch(self, digest: str) -> bytes:
        assert digest == self.digest
        self.fetches += 1
        return self.wasm


@pytest.fixture
def setup(sandbox: Sandbox, wasm: Callable[[str], bytes]) -> Setup:
    return Setup(sandbox, wasm("preinit_table"))


def provider(
    sandbox: Sandbox,
    setup: Setup,
    pool: ThreadPoolExecutor,
    image_dir: Path | None,
    records: FakeRecords | None,
) -> ImageProvider:
    return ImageProvider(sandbox, setup.fetch, pool, image_dir=image_dir, records=records)


def file_backed(image: object) -> bool:
    """Whether every memory of the image is a block of an open, mapped image file (a
    restore then maps it copy-on-write: no open, parse or copy per restore)."""
    assert isinstance(image, InstanceImage)
    return bool(image.memories) and all(m.source is not None for m in image.memories)


def test_concurrent_first_requests_run_init_once_and_keep_it_everywhere(
    sandbox: Sandbox, setup: Setup, pool: ThreadPoolExecutor, tmp_path: Path
) -> None:
    records = FakeRecords()
    images = provider(sandbox, setup, pool, tmp_path, records)

    async def main() -> list[object]:
        return await asyncio.gather(*(images.get(setup.module, INIT, "acme") for _ in range(5)))

    got = asyncio.run(main())
    assert images.captured == 1 and setup.fetches == 1
    assert all(image is got[0] for image in got)
    path = images.image_path(setup.digest, INIT, "acme")
    assert path is not None and path.is_file()
    assert list(records.records) == [
        ("acme", INSTANCE_IMAGE, sandbox.engine_fingerprint, setup.digest, INIT)
    ]
    assert asyncio.run(images.get(setup.module, INIT, "acme")) is got[0]  # memory hit
    assert file_backed(got[0])  # what the LRU holds is the mapped file: restores map it
    assert images.captured == 1


def test_two_tenants_of_one_module_never_share_an_image(
    sandbox: Sandbox, setup: Setup, pool: ThreadPoolExecutor, tmp_path: Path
) -> None:
    """init draws a random stamp: a shared image would hand tenant b what init made for a
    (a key generated at init, say)."""
    images = provider(sandbox, setup, pool, tmp_path, FakeRecords())
    first = asyncio.run(images.get(setup.module, INIT, "a"))
    second = asyncio.run(images.get(setup.module, INIT, "b"))
    assert images.captured == 2  # init ran for each tenant, from memory, file or store
    assert stamp(sandbox, setup.module, first) != stamp(sandbox, setup.module, second)
    assert images.image_path(setup.digest, INIT, "a") != images.image_path(setup.digest, INIT, "b")
    again = provider(sandbox, setup, pool, tmp_path, FakeRecords())  # the files, per tenant
    assert stamp(sandbox, setup.module, asyncio.run(again.get(setup.module, INIT, "b"))) == (
        stamp(sandbox, setup.module, second)
    )
    assert again.loaded_from_file == 1


def test_a_new_provider_reads_the_file_then_the_store_and_never_reruns_init(
    sandbox: Sandbox, setup: Setup, pool: ThreadPoolExecutor, tmp_path: Path
) -> None:
    records = FakeRecords()
    first = provider(sandbox, setup, pool, tmp_path / "a", records)
    original = stamp(sandbox, setup.module, asyncio.run(first.get(setup.module, INIT, "acme")))

    from_file = provider(sandbox, setup, pool, tmp_path / "a", None)
    image = asyncio.run(from_file.get(setup.module, INIT, "acme"))
    assert (from_file.loaded_from_file, from_file.captured) == (1, 0)
    assert file_backed(image)
    assert stamp(sandbox, setup.module, image) == original

    # Another replica (empty directory) gets it from the tenant's store record.
    from_store = provider(sandbox, setup, pool, tmp_path / "b", records)
    image = asyncio.run(from_store.get(setup.module, INIT, "acme"))
    assert (from_store.loaded_from_store, from_store.captured, setup.fetches) == (1, 0, 1)
    assert file_backed(image)
    assert stamp(sandbox, setup.module, image) == original
    path = from_store.image_path(setup.digest, INIT, "acme")
    assert path is not None and path.is_file()  # and now it has the file too

    # Another tenant has no record: init runs for it (and its record is made).
    asyncio.run(
        provider(sandbox, setup, pool, tmp_path / "c", records).get(setup.module, INIT, "b")
    )
    assert setup.fetches == 2 and len(records.records) == 2


def test_a_damaged_file_is_removed_and_init_runs_again(
    sandbox: Sandbox, setup: Setup, pool: ThreadPoolExecutor, tmp_path: Path
) -> None:
    first = provider(sandbox, setup, pool, tmp_path, None)
    asyncio.run(first.get(setup.module, INIT, "acme"))
    path = first.image_path(setup.digest, INIT, "acme")
    assert path is not None
    path.write_bytes(b"TWIMAGE\x00\x09\x00\x00\x00")  # an unknown format version
    second = provider(sandbox, setup, pool, tmp_path, None)
    image = asyncio.run(second.get(setup.module, INIT, "acme"))
    assert second.captured == 1 and second.loaded_from_file == 0
    assert path.read_bytes()[:8] == b"TWIMAGE\x00" and path.stat().st_size > 1 << 20
    assert stamp(sandbox, setup.module, image) != 0


def test_an_image_file_that_fails_its_digest_is_not_mapped(
    sandbox: Sandbox, setup: Setup, pool: ThreadPoolExecutor, tmp_path: Path
) -> None:
    """A flipped byte in a memory block parses fine, so only the digest kept beside the file
    catches it: without it every instance would start from silently wrong memory."""
    first = provider(sandbox, setup, pool, tmp_path, None)
    asyncio.run(first.get(setup.module, INIT, "acme"))
    path = first.image_path(setup.digest, INIT, "acme")
    assert path is not None
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # the last byte of the last memory block
    path.write_bytes(bytes(data))
    second = provider(sandbox, setup, pool, tmp_path, None)
    image = asyncio.run(second.get(setup.module, INIT, "acme"))
    assert (second.captured, second.loaded_from_file) == (1, 0)
    assert stamp(sandbox, setup.module, image) != 0
    digest_file = path.with_name(path.name + ".blake3")
    assert digest_file.read_text().strip() == blake3.blake3(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("failure", ["unavailable", "mismatch", "corrupt"])
def test_store_trouble_costs_an_init_run_not_the_call(
    sandbox: Sandbox, setup: Setup, pool: ThreadPoolExecutor, tmp_path: Path, failure: str
) -> None:
    records = FakeRecords()
    asyncio.run(
        provider(sandbox, setup, pool, tmp_path / "a", records).get(setup.module, INIT, "t")
    )
    if failure == "unavailable":
        records.fail = UnavailableError("store down")
    elif failure == "mismatch":
        records.mismatch = True
    else:
        for key in records.records:
            records.records[key] = b"not an image"
    images = provider(sandbox, setup, pool, tmp_path / "b", records)
    image = asyncio.run(images.get(setup.module, INIT, "t"))
    assert images.captured == 1 and images.loaded_from_store == 0
    outcome = sandbox.invoke(setup.module, "lookup", [WasmValue(ValueType.I32, 3)], image=image)
    assert outcome.results is not None and outcome.results[0].payload != 0


def test_a_failing_init_caches_nothing(
    sandbox: Sandbox, pool: ThreadPoolExecutor, tmp_path: Path
) -> None:
    wasm = bytes(wasmtime.wat2wasm('(module (func (export "init") unreachable))'))
    setup = Setup(sandbox, wasm)
    records = FakeRecords()
    images = provider(sandbox, setup, pool, tmp_path, records)
    for _ in range(2):  # not cached: the second request runs (and fails) again
        with pytest.raises(InitFailedError):
            asyncio.run(images.get(setup.module, "init", "t"))
    assert setup.fetches == 2 and records.records == {}
    assert not list(tmp_path.rglob("*.twimg"))


def test_the_image_directory_keeps_under_its_cap_evicting_the_least_recently_used(
    sandbox: Sandbox, setup: Setup, pool: ThreadPoolExecutor, tmp_path: Path
) -> None:
    first = provider(sandbox, setup, pool, tmp_path, None)
    asyncio.run(first.get(setup.module, INIT, "a"))
    paths = {t: first.image_path(setup.digest, INIT, t) for t in ("a", "b", "c")}
    assert paths["a"] is not None
    size = paths["a"].stat().st_size
    capped = ImageProvider(
        sandbox, setup.fetch, pool, image_dir=tmp_path, image_dir_max_bytes=2 * size + size // 2
    )

    asyncio.run(capped.get(setup.module, INIT, "b"))  # two files: under the cap
    assert capped.evicted == 0
    asyncio.run(capped.get(setup.module, INIT, "a"))  # read from its file: used after b's
    assert capped.loaded_from_file == 1
    asyncio.run(capped.get(setup.module, INIT, "c"))  # a third: b goes

    assert capped.evicted == 1
    assert {t: p is not None and p.exists() for t, p in paths.items()} == {
        "a": True,
        "b": False,
        "c": True,
    }
