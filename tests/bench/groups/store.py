"""Group `snapshot_store`: store throughput (Put/Get of 16 and 256 MiB over loopback gRPC)
against bare grpcio streaming of the same bytes, CreateSnapshot and ReadSnapshot of a
16 MiB record against PutBlob and GetBlob of its payload, that record's blob stored raw
against zstd again in process (the second pass blob format 2 removed), and the first call
of a fresh executor replica for a >= 0.5 MB module with its artifact in the store against
compiling it.

The bulk and cold-start tiers are self-timed (few, long samples); the harness times StatBlob
against a bare unary echo and carries the tiers in its params.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import blake3
import grpc
import wasmtime
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb
from tensorwasm_common.blob_client import CHUNK_BYTES, BlobClient
from tensorwasm_common.channels import open_channel
from tensorwasm_common.snapshot_client import SnapshotClient
from tensorwasm_executor.images.module_provider import ModuleProvider
from tensorwasm_executor.wasm.sandbox import CompiledModule, Sandbox
from tensorwasm_executor.wasm.values import ValueType, WasmValue
from tensorwasm_snapshot.blobstore import BlobStore, Codec
from tensorwasm_snapshot.record_format import PayloadEncoder, RecordMeta

from tests.bench.echo_server import (
    DOWNLOAD_METHOD,
    FULL_METHOD,
    UPLOAD_METHOD,
    running_echo_server,
)
from tests.bench.groups.executor import generate_module
from tests.bench.harness import Benchmark, RunConfig, group
from tests.bench.selftimed import Reported, Tier, as_params, run_self_timed
from tests.integration.test_store_service import SnapshotProcess

T = TypeVar("T")
MIB = 1 << 20
SIZES_MIB = (16, 256)
RECORD_MIB = 16
BULK_TIER, BULK_TIER_QUICK = Tier(6, 1, 3), Tier(3, 1, 3)
COLD_TIER, COLD_TIER_QUICK = Tier(6, 1, 3), Tier(3, 1, 3)
MODULE_FUNCTIONS = 8200  # ~0.53 MB of wasm
COLD_GOAL = "first call from the store artifact >= 20x faster than compiling (ratio <= 0.05)"


async def _collect_garbage(blobs: BlobClient) -> None:
    """Runs the store's collector (the call is made on the running loop, as grpc.aio needs)."""
    await blobs._stub.CollectGarbage(pb.CollectGarbageRequest(), timeout=60)


def _chunks(data: bytearray) -> Iterator[bytes]:
    view = memoryview(data)
    return (bytes(view[i : i + CHUNK_BYTES]) for i in range(0, len(data), CHUNK_BYTES))


@group("snapshot_store")
def snapshot_store(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
    """Starts a store and an echo server; measures bulk transfers and cold starts."""
    with contextlib.ExitStack() as cleanup:
        temp = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tw-bench-store-")))
        store = SnapshotProcess(temp, {"gc_grace_seconds": "0"})
        cleanup.callback(store.stop)
        store.start()
        echo = cleanup.enter_context(running_echo_server(temp / "echo.log"))
        loop = asyncio.new_event_loop()
        cleanup.callback(loop.close)

        def run(coro: Awaitable[T]) -> T:
            return loop.run_until_complete(coro)

        async def channels() -> tuple[grpc.aio.Channel, grpc.aio.Channel]:
            return store.aio_channel(), open_channel(echo)

        store_channel, echo_channel = run(channels())
        cleanup.callback(lambda: run(echo_channel.close()))
        cleanup.callback(lambda: run(store_channel.close()))
        blobs, snapshots = BlobClient(store_channel), SnapshotClient(store_channel)
        bulk = _bulk_tier(config, run, blobs, echo_channel)
        records = _record_tier(config, run, blobs, snapshots) + _at_rest_tier(config, temp)
        cold = _cold_tier(config, run, blobs, snapshots, temp)

        sync_store = cleanup.enter_context(store.channel())
        sync_echo = cleanup.enter_context(grpc.insecure_channel(echo))
        stat = sync_store.unary_unary(
            "/tensorwasm.snapshot.v1.SnapshotStoreService/StatBlob",
            request_serializer=pb.StatBlobRequest.SerializeToString,
            response_deserializer=pb.StatBlobResponse.FromString,
        )
        digest = run(blobs.put(b"stat me", ref_name="bench/stat")).blob.digest
        request = pb.StatBlobRequest(digest=digest)
        echo_call = sync_echo.unary_unary(FULL_METHOD)
        payload = b"\x5a" * request.ByteSize()
        yield [
            Benchmark("grpcio/echo_unary", lambda: echo_call(payload, timeout=30)),
            Benchmark(
                "store/stat_blob",
                lambda: stat(request, timeout=30),
                anchors=("grpcio/echo_unary",),
                description="StatBlob: a header read, over gRPC",
                params={"self_timed": bulk + records + cold},
            ),
        ]


def _bulk_tier(
    config: RunConfig,
    run: Callable[[Awaitable[object]], object],
    blobs: BlobClient,
    echo_channel: grpc.aio.Channel,
) -> list[dict[str, object]]:
    """Put and Get of each size through the store and through bare grpcio streams."""
    tier = BULK_TIER_QUICK if config.quick else BULK_TIER
    upload = echo_channel.stream_unary(UPLOAD_METHOD)
    download = echo_channel.unary_stream(DOWNLOAD_METHOD)
    entries: list[dict[str, object]] = []
    for size_mib in SIZES_MIB:
        size = size_mib * MIB
        data = bytearray(blake3.blake3(b"bulk").digest(length=size))  # incompressible
        stored = run(blobs.put(bytes(data), ref_name=f"bench/get-{size_mib}"))
        digest = stored.blob.digest  # type: ignore[attr-defined]
        counter = [0]

        def put(data: bytearray = data, counter: list[int] = counter) -> Reported:
            counter[0] += 1
            data[:8] = counter[0].to_bytes(8, "little")  # a new object every time: no dedupe
            start = time.perf_counter_ns()
            run(blobs.put_stream(_chunks(data), size_bytes=len(data)))
            elapsed = time.perf_counter_ns() - start
            run(_collect_garbage(blobs))
            return Reported(elapsed)

        def get(digest: str = digest, size: int = size) -> Reported:
            start = time.perf_counter_ns()
            got = run(blobs.get(digest))
            elapsed = time.perf_counter_ns() - start
            assert len(got) == size  # type: ignore[arg-type]
            return Reported(elapsed)

        def bare_put(data: bytearray = data) -> Reported:
            async def send() -> bytes:
                return await upload(_chunks(data), timeout=120)  # type: ignore[no-any-return]

            start = time.perf_counter_ns()
            answer = run(send())
            elapsed = time.perf_counter_ns() - start
            assert int.from_bytes(answer, "little") == len(data)  # type: ignore[arg-type]
            return Reported(elapsed)

        def bare_get(size: int = size) -> Reported:
            async def fetch() -> bytes:
                request = size.to_bytes(8, "little") + CHUNK_BYTES.to_bytes(8, "little")
                return b"".join([chunk async for chunk in download(request, timeout=120)])

            start = time.perf_counter_ns()
            got = run(fetch())
            elapsed = time.perf_counter_ns() - start
            assert len(got) == size  # type: ignore[arg-type]
            return Reported(elapsed)

        names = {
            k: f"{k}/{size_mib}MiB" for k in ("grpcio/put", "grpcio/get", "store/put", "store/get")
        }
        results = run_self_timed(
            f"snapshot_store [self-timed: {size_mib} MiB objects, 1 MiB chunks]",
            [
                Benchmark(names["grpcio/put"], bare_put, description="bare client stream"),
                Benchmark(names["grpcio/get"], bare_get, description="bare server stream"),
                Benchmark(
                    names["store/put"],
                    put,
                    anchors=(names["grpcio/put"],),
                    description="PutBlob: BLAKE3 + zstd + fsync + rename + index",
                ),
                Benchmark(
                    names["store/get"],
                    get,
                    anchors=(names["grpcio/get"],),
                    description="GetBlob: verify whole, then stream; client re-hashes",
                ),
            ],
            tier,
        )
        for name, result in results.items():
            entry = as_params(result, tier)
            median_s = result.summary.p50 / 1e9
            entry["mb_per_second_p50"] = round(size / 1e6 / median_s, 1)
            print(f"{name}: {entry['mb_per_second_p50']} MB/s at P50")
            entries.append(entry)
    print()
    return entries


def _record_payload(size: int) -> bytes:
    """Half incompressible, half zero pages: about as compressible as a compiled artifact."""
    noise = blake3.blake3(b"record").digest(length=size // 2)
    page = 4096
    pieces = (noise[i : i + page] + bytes(page) for i in range(0, len(noise), page))
    return b"".join(pieces)[:size]


def _record_tier(
    config: RunConfig,
    run: Callable[[Awaitable[object]], object],
    blobs: BlobClient,
    snapshots: SnapshotClient,
) -> list[dict[str, object]]:
    """CreateSnapshot and ReadSnapshot of a 16 MiB payload against PutBlob and GetBlob of it."""
    tier = BULK_TIER_QUICK if config.quick else BULK_TIER
    size = RECORD_MIB * MIB
    payload = _record_payload(size)
    source = blake3.blake3(b"record source").hexdigest()
    kind = pb.SNAPSHOT_KIND_COMPILED_MODULE
    counter = [0]

    def fingerprint() -> str:
        counter[0] += 1  # a new key (and record) every time
        return f"bench-engine/{counter[0]}"

    created = run(snapshots.create_snapshot(kind, fingerprint(), source, payload))
    snapshot_id, snapshot_fingerprint = created.id, created.engine_fingerprint  # type: ignore[attr-defined]
    blob_digest = run(blobs.put(payload, ref_name="bench/record-anchor")).blob.digest  # type: ignore[attr-defined]

    def create() -> Reported:
        start = time.perf_counter_ns()
        made = run(snapshots.create_snapshot(kind, fingerprint(), source, payload))
        elapsed = time.perf_counter_ns() - start
        run(snapshots.delete_snapshot(made.id))  # type: ignore[attr-defined]
        run(_collect_garbage(blobs))
        return Reported(elapsed)

    def read() -> Reported:
        start = time.perf_counter_ns()
        got = run(snapshots.read_snapshot(snapshot_id, snapshot_fingerprint))
        elapsed = time.perf_counter_ns() - start
        assert got == payload
        return Reported(elapsed)

    def put() -> Reported:
        data = bytearray(payload)
        data[:8] = fingerprint().encode()[-8:].ljust(8, b"\0")  # a new object: no dedupe
        start = time.perf_counter_ns()
        run(blobs.put_stream(_chunks(data), size_bytes=len(data)))
        elapsed = time.perf_counter_ns() - start
        run(_collect_garbage(blobs))
        return Reported(elapsed)

    def get() -> Reported:
        start = time.perf_counter_ns()
        got = run(blobs.get(blob_digest))
        elapsed = time.perf_counter_ns() - start
        assert len(got) == size  # type: ignore[arg-type]
        return Reported(elapsed)

    names = {k: f"{k}/{RECORD_MIB}MiB" for k in ("records/put_blob", "records/get_blob")}
    results = run_self_timed(
        f"snapshot_store [self-timed: {RECORD_MIB} MiB record payloads, half compressible]",
        [
            Benchmark(names["records/put_blob"], put, description="PutBlob of the payload"),
            Benchmark(names["records/get_blob"], get, description="GetBlob of the payload"),
            Benchmark(
                f"records/create/{RECORD_MIB}MiB",
                create,
                anchors=(names["records/put_blob"],),
                description="CreateSnapshot: encode (zstd payload) + store the record blob",
            ),
            Benchmark(
                f"records/read/{RECORD_MIB}MiB",
                read,
                anchors=(names["records/get_blob"],),
                description="ReadSnapshot: verify the record blob and payload, then stream",
            ),
        ],
        tier,
    )
    entries = []
    for name, result in results.items():
        entry = as_params(result, tier)
        entry["mb_per_second_p50"] = round(size / 1e6 / (result.summary.p50 / 1e9), 1)
        print(f"{name}: {entry['mb_per_second_p50']} MB/s at P50 (payload bytes)")
        entries.append(entry)
    print()
    return entries


def _at_rest_tier(config: RunConfig, temp: Path) -> list[dict[str, object]]:
    """In process, no gRPC: a 16 MiB record's blob stored and read raw (today) and with a
    second zstd pass (what the store did before blob format 2), on one store."""
    tier = BULK_TIER_QUICK if config.quick else BULK_TIER
    payload = _record_payload(RECORD_MIB * MIB)
    meta = RecordMeta(1, "bench-engine", blake3.blake3(b"src").hexdigest(), "", "bench", 1)
    encoder = PayloadEncoder(spool_dir=temp)
    encoder.write(payload)
    sealed = encoder.finish(meta)
    record = b"".join(sealed.pieces(CHUNK_BYTES))
    encoder.close()
    store = BlobStore(temp / "at-rest")
    counter = [0]
    stored: dict[Codec, str] = {}

    def put(codec: Codec) -> Reported:
        counter[0] += 1
        data = counter[0].to_bytes(8, "little") + record  # a new blob every time
        start = time.perf_counter_ns()
        with store.writer(codec=codec) as writer:
            for at in range(0, len(data), CHUNK_BYTES):
                writer.write(data[at : at + CHUNK_BYTES])
            info, _ = writer.commit()
        elapsed = time.perf_counter_ns() - start
        old = stored.get(codec)
        if old is not None:
            store.path_of(old).unlink()
        stored[codec] = info.digest
        return Reported(elapsed)

    def get(codec: Codec) -> Reported:
        start = time.perf_counter_ns()
        for _ in store.open_verified(stored[codec]):  # verify pass, then the streaming pass
            pass
        return Reported(time.perf_counter_ns() - start)

    put(Codec.RAW), put(Codec.ZSTD)
    sizes = {c: store.stat(d).stored_size_bytes for c, d in stored.items()}
    results = run_self_timed(
        f"snapshot_store [self-timed, in process: a {len(record)}-byte record blob at rest]",
        [
            Benchmark("at_rest/put_zstd_again", lambda: put(Codec.ZSTD), description="before"),
            Benchmark("at_rest/get_zstd_again", lambda: get(Codec.ZSTD), description="before"),
            Benchmark(
                "at_rest/put_raw",
                lambda: put(Codec.RAW),
                anchors=("at_rest/put_zstd_again",),
                description="BLAKE3 + write + fsync + rename (records today)",
            ),
            Benchmark(
                "at_rest/get_raw",
                lambda: get(Codec.RAW),
                anchors=("at_rest/get_zstd_again",),
                description="verify pass + streaming pass, each hashing",
            ),
        ],
        tier,
    )
    print(f"record blob on disk: raw {sizes[Codec.RAW]} B, zstd again {sizes[Codec.ZSTD]} B\n")
    entries = []
    for result in results.values():
        entry = as_params(result, tier)
        entry["record_bytes"] = len(record)
        entry["stored_bytes"] = sizes[Codec.ZSTD if "zstd" in result.benchmark.name else Codec.RAW]
        entries.append(entry)
    return entries


def _cold_tier(
    config: RunConfig,
    run: Callable[[Awaitable[object]], object],
    blobs: BlobClient,
    snapshots: SnapshotClient,
    temp: Path,
) -> list[dict[str, object]]:
    """First call on a fresh replica (new engine, empty memory and artifact directory)."""
    tier = COLD_TIER_QUICK if config.quick else COLD_TIER
    wasm = bytes(wasmtime.wat2wasm(generate_module(MODULE_FUNCTIONS)))
    digest = run(blobs.put(wasm, ref_name="bench/module")).blob.digest  # type: ignore[attr-defined]
    pool = ThreadPoolExecutor(1)
    replicas = iter(range(1 << 30))
    expected: list[object] = []

    def provider_get(provider: ModuleProvider) -> CompiledModule:
        async def get() -> CompiledModule:
            return (await provider.get(digest))[0]

        return run(get())  # type: ignore[return-value]

    def first_call(*, from_store: bool) -> Reported:
        artifact_dir = temp / f"replica-{next(replicas)}"
        with Sandbox() as sandbox:
            provider = ModuleProvider(
                sandbox,
                blobs.get,
                pool,
                artifact_dir=artifact_dir,
                snapshots=snapshots if from_store else None,
            )
            start = time.perf_counter_ns()
            module = provider_get(provider)
            result = sandbox.invoke(module, "run", [WasmValue(ValueType.I32, 7)]).results
            elapsed = time.perf_counter_ns() - start
        assert (provider.restored, provider.compiled) == ((1, 0) if from_store else (0, 1))
        expected.append(result)
        assert result == expected[0]
        return Reported(elapsed)

    # The artifact of this engine fingerprint, put in the store by a replica that compiled it.
    with Sandbox() as sandbox:
        seeding = ModuleProvider(
            sandbox, blobs.get, pool, artifact_dir=temp / "seed", snapshots=snapshots
        )
        run(seeding.get(digest))
        assert seeding.shared == 1
    results = run_self_timed(
        f"snapshot_store [self-timed: first call, {len(wasm)}-byte module, fresh replica]",
        [
            Benchmark(
                "cold/compile_first_call",
                lambda: first_call(from_store=False),
                description="GetBlob wasm + compile + write artifact + instantiate + call",
            ),
            Benchmark(
                "cold/store_artifact_first_call",
                lambda: first_call(from_store=True),
                anchors=("cold/compile_first_call",),
                description="FindSnapshot + ReadSnapshot + write file + deserialize_file + call",
            ),
        ],
        tier,
    )
    pool.shutdown()
    entries = []
    for result in results.values():
        entry = as_params(result, tier)
        entry["wasm_bytes"], entry["goal"] = len(wasm), COLD_GOAL
        entries.append(entry)
    return entries
