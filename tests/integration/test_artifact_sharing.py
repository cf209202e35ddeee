"""Compiled artifacts shared through the snapshot store: a replica with an empty artifact
directory takes another's artifact instead of compiling; an engine of another fingerprint
refuses it and compiles. Real store process, real wasmtime engines."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import pytest
from tensorwasm_common.blob_client import BlobClient
from tensorwasm_common.channels import open_channel
from tensorwasm_common.snapshot_client import COMPILED_MODULE, SnapshotClient
from tensorwasm_executor.images.module_provider import ARTIFACT_TENANT, ModuleProvider
from tensorwasm_executor.wasm.sandbox import Sandbox
from tensorwasm_executor.wasm.values import ValueType, WasmValue

from tests.integration.test_store_service import SnapshotProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SnapshotProcess]:
    service = SnapshotProcess(tmp_path_factory.mktemp("artifacts"))
    service.start()
    yield service
    service.stop()


def provide(
    store: SnapshotProcess, sandbox: Sandbox, artifact_dir: Path, wasm: bytes
) -> ModuleProvider:
    """One replica's first request for `wasm`; returns its provider (counters)."""

    async def main() -> ModuleProvider:
        async with store.aio_channel() as channel:
            blobs = BlobClient(channel)
            digest = (await blobs.put(wasm)).blob.digest
            with ThreadPoolExecutor(1) as pool:
                provider = ModuleProvider(
                    sandbox,
                    blobs.get,
                    pool,
                    artifact_dir=artifact_dir,
                    snapshots=SnapshotClient(channel),
                )
                module, hit = await provider.get(digest)
            assert not hit
            args = [WasmValue(ValueType.I32, 2), WasmValue(ValueType.I32, 40)]
            assert sandbox.invoke(module, "add", args).results == (WasmValue(ValueType.I32, 42),)
            return provider

    return asyncio.run(main())


def records(store: SnapshotProcess, digest: str) -> list[str]:
    async def main() -> list[str]:
        async with store.aio_channel() as channel:
            page = await SnapshotClient(channel).list_snapshots(
                kind=COMPILED_MODULE, source_digest=digest, tenant=ARTIFACT_TENANT
            )
        return sorted(s.engine_fingerprint for s in page.snapshots)

    return asyncio.run(main())


def test_a_fresh_replica_takes_the_artifact_and_another_engine_compiles(
    store: SnapshotProcess, tmp_path: Path, wasm: Callable[[str], bytes]
) -> None:
    data = wasm("add")
    digest = blake3.blake3(data).hexdigest()
    with Sandbox() as first:
        compiler = provide(store, first, tmp_path / "a", data)
        fingerprint = first.engine_fingerprint
    assert (compiler.compiled, compiler.shared, compiler.restored) == (1, 1, 0)
    assert records(store, digest) == [fingerprint]

    with Sandbox() as fresh:  # another replica: empty memory, empty artifact directory
        assert fresh.engine_fingerprint == fingerprint
        replica = provide(store, fresh, tmp_path / "b", data)
    assert (replica.compiled, replica.shared, replica.restored) == (0, 0, 1)
    assert (tmp_path / "b" / fingerprint[:16] / f"{digest}.cwasm").is_file()

    with Sandbox(fuel_metering=True) as other:  # another engine configuration
        assert other.engine_fingerprint != fingerprint
        refusing = provide(store, other, tmp_path / "c", data)
        other_fingerprint = other.engine_fingerprint
    assert (refusing.compiled, refusing.restored, refusing.shared) == (1, 0, 1)
    assert records(store, digest) == sorted([fingerprint, other_fingerprint])


def test_a_store_failure_costs_a_compile_not_the_call(
    tmp_path: Path, wasm: Callable[[str], bytes]
) -> None:
    data = wasm("add")
    digest = blake3.blake3(data).hexdigest()

    async def fetch(wanted: str) -> bytes:
        assert wanted == digest
        return data

    async def main() -> ModuleProvider:
        # Nothing listens here: FindSnapshot and CreateSnapshot both fail (UNAVAILABLE).
        async with open_channel("127.0.0.1:1") as channel:
            with Sandbox() as sandbox, ThreadPoolExecutor(1) as pool:
                provider = ModuleProvider(
                    sandbox,
                    fetch,
                    pool,
                    artifact_dir=tmp_path,
                    snapshots=SnapshotClient(channel, timeout_seconds=2),
                )
                await provider.get(digest)
        return provider

    provider = asyncio.run(main())
    assert (provider.compiled, provider.restored, provider.shared) == (1, 0, 0)
