"""Group `store_backends`: the snapshot store with its blobs in SeaweedFS (S3, index in
SQLite) against the same store on local disk, both as real processes over loopback gRPC:
Put and Get of 64 MiB objects (8 MiB at smoke size), and the first call of a fresh executor
replica from a compiled artifact held in SeaweedFS against compiling the module.

The bulk and cold-start tiers are self-timed (few, long samples); the harness times StatBlob
(a ranged GET of the header on S3, a file read on disk) and carries the tiers in its params.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import blake3
import grpc
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb
from tensorwasm_common.blob_client import CHUNK_BYTES, BlobClient
from tensorwasm_common.snapshot_client import SnapshotClient

from tests.bench.groups.store import _chunks, _cold_tier, _collect_garbage
from tests.bench.harness import Benchmark, RunConfig, group
from tests.bench.selftimed import Reported, Tier, as_params, run_self_timed
from tests.engines.seaweedfs import running_seaweedfs
from tests.integration.test_store_service import SnapshotProcess

T = TypeVar("T")
MIB = 1 << 20
SIZE_MIB, SIZE_MIB_QUICK = 64, 8
BULK_TIER, BULK_TIER_QUICK = Tier(12, 1, 4), Tier(3, 1, 3)


@group("store_backends")
def store_backends(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
    """Starts SeaweedFS and two stores (S3, local disk); measures bulk transfers and cold
    starts from the S3-backed store."""
    with contextlib.ExitStack() as cleanup:
        temp = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tw-bench-s3-")))
        seaweedfs = cleanup.enter_context(running_seaweedfs(temp / "seaweedfs"))
        bucket = seaweedfs.create_bucket("bench")
        stores = {
            "disk": SnapshotProcess(temp / "disk", {"gc_grace_seconds": "0"}),
            "s3": SnapshotProcess(
                temp / "s3",
                {"gc_grace_seconds": "0", "blob_url": seaweedfs.blob_url(bucket)},
                env=seaweedfs.env(),
            ),
        }
        for store in stores.values():
            store.data_dir.mkdir()
            cleanup.callback(store.stop)
            store.start()
        loop = asyncio.new_event_loop()
        cleanup.callback(loop.close)

        def run(coro: Awaitable[T]) -> T:
            return loop.run_until_complete(coro)

        async def channels() -> dict[str, grpc.aio.Channel]:
            return {name: store.aio_channel() for name, store in stores.items()}

        opened = run(channels())
        for channel in opened.values():
            cleanup.callback(lambda channel=channel: run(channel.close()))
        blobs = {name: BlobClient(channel) for name, channel in opened.items()}
        bulk = _bulk_tier(config, run, blobs)
        cold = _cold_tier(config, run, blobs["s3"], SnapshotClient(opened["s3"]), temp)

        benchmarks = []
        for name in ("disk", "s3"):
            sync = cleanup.enter_context(stores[name].channel())
            stat = sync.unary_unary(
                "/tensorwasm.snapshot.v1.SnapshotStoreService/StatBlob",
                request_serializer=pb.StatBlobRequest.SerializeToString,
                response_deserializer=pb.StatBlobResponse.FromString,
            )
            digest = run(blobs[name].put(b"stat me", ref_name="bench/stat")).blob.digest  # type: ignore[attr-defined]
            request = pb.StatBlobRequest(digest=digest)
            benchmarks.append(
                Benchmark(
                    f"{name}/stat_blob",
                    lambda stat=stat, request=request: stat(request, timeout=30),
                    anchors=("disk/stat_blob",) if name == "s3" else (),
                    description="StatBlob: the header, "
                    + ("a ranged GET on SeaweedFS" if name == "s3" else "a file read"),
                    params={"self_timed": bulk + cold} if name == "s3" else {},
                )
            )
        yield benchmarks


def _bulk_tier(
    config: RunConfig, runner: Callable[[Awaitable[Any]], Any], blobs: dict[str, BlobClient]
) -> list[dict[str, object]]:
    """Put and Get of one size through each backend's store."""
    tier = BULK_TIER_QUICK if config.quick else BULK_TIER
    size_mib = SIZE_MIB_QUICK if config.quick else SIZE_MIB
    size = size_mib * MIB
    data = bytearray(blake3.blake3(b"bulk").digest(length=size))  # incompressible
    counter = [0]
    benchmarks = []
    for name, client in blobs.items():
        stored = runner(client.put(bytes(data), ref_name=f"bench/get-{size_mib}"))
        digest = stored.blob.digest

        def put(client: BlobClient = client) -> Reported:
            counter[0] += 1
            data[:8] = counter[0].to_bytes(8, "little")  # a new object every time: no dedupe
            start = time.perf_counter_ns()
            runner(client.put_stream(_chunks(data), size_bytes=len(data)))
            elapsed = time.perf_counter_ns() - start
            runner(_collect_garbage(client))
            return Reported(elapsed)

        def get(client: BlobClient = client, digest: str = digest) -> Reported:
            start = time.perf_counter_ns()
            got = runner(client.get(digest))
            elapsed = time.perf_counter_ns() - start
            assert len(got) == size
            return Reported(elapsed)

        anchored = name == "s3"
        benchmarks += [
            Benchmark(
                f"{name}/put/{size_mib}MiB",
                put,
                anchors=(f"disk/put/{size_mib}MiB",) if anchored else (),
                description="PutBlob: BLAKE3 + zstd + spool, then "
                + ("a multipart upload (If-None-Match)" if anchored else "fsync + rename"),
            ),
            Benchmark(
                f"{name}/get/{size_mib}MiB",
                get,
                anchors=(f"disk/get/{size_mib}MiB",) if anchored else (),
                description="GetBlob: "
                + ("download to a spool file, " if anchored else "")
                + "verify whole, then stream",
            ),
        ]
    results = run_self_timed(
        f"store_backends [self-timed: {size_mib} MiB objects, {CHUNK_BYTES // MIB} MiB chunks]",
        benchmarks,
        tier,
    )
    entries: list[dict[str, object]] = []
    for result_name, result in results.items():
        entry = as_params(result, tier)
        entry["mb_per_second_p50"] = round(size / 1e6 / (result.summary.p50 / 1e9), 1)
        print(f"{result_name}: {entry['mb_per_second_p50']} MB/s at P50")
        entries.append(entry)
    print()
    return entries
