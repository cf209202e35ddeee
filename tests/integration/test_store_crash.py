"""A snapshot store killed with SIGKILL in the middle of a large upload restarts cleanly: the
object is whole or absent (absent here), no temp file is left, and what was stored before
is intact, references and usage included."""

from __future__ import annotations

import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as pb_grpc

from tests.integration.test_store_service import (
    MIB,
    SnapshotProcess,
    absent,
    as_tenant,
    code_reason,
    failure,
    put,
    read,
    requests,
    usage,
)

pytestmark = pytest.mark.integration

BIG_CHUNKS = 200  # 200 MiB, incompressible
TENANT = "crash"


def big_object(seed: int) -> Iterator[bytes]:
    """The same 200 MiB of pseudo-random bytes on every call, one 1 MiB chunk at a time."""
    rng = random.Random(seed)
    for _ in range(BIG_CHUNKS):
        yield rng.randbytes(MIB)


def partial_upload(service: SnapshotProcess, min_bytes: int) -> Path:
    """Waits until the server's temp file holds `min_bytes`; returns its path."""
    deadline = time.monotonic() + 60
    while True:
        sizes = {p: p.stat().st_size for p in service.tmp_files()}
        done = [p for p, size in sizes.items() if size >= min_bytes]
        if done:
            return done[0]
        assert time.monotonic() < deadline, f"the upload never reached {min_bytes} bytes"
        time.sleep(0.01)


def test_sigkill_mid_upload_leaves_nothing_and_the_store_restarts_clean(tmp_path: Path) -> None:
    seed = random.randrange(1 << 32)
    big_hasher = blake3.blake3()
    for chunk in big_object(seed):
        big_hasher.update(chunk)
    big = big_hasher.hexdigest()
    service = SnapshotProcess(tmp_path).start()
    try:
        with service.channel() as channel:
            stub = pb_grpc.SnapshotStoreServiceStub(channel)
            kept_data = random.Random(seed + 1).randbytes(3 * MIB + 1)
            kept = put(stub, kept_data, ref_name="kept", tenant=TENANT).blob.digest
            loose_data = b"unreferenced, within its grace period"
            loose = put(stub, loose_data).blob.digest
            before = usage(stub, TENANT)
            left_behind: list[Path] = []

            def upload_then_crash() -> Iterator[bytes]:
                for index, chunk in enumerate(big_object(seed)):
                    if index == BIG_CHUNKS // 2:
                        left_behind.append(partial_upload(service, 64 * MIB))
                        service.kill()
                        return
                    yield chunk

            upload = requests(
                upload_then_crash(), size=BIG_CHUNKS * MIB, digest=big, ref_name="big"
            )
            error = failure(lambda: stub.PutBlob(upload, timeout=120, metadata=as_tenant(TENANT)))
            assert code_reason(error) == ("UNAVAILABLE", "UPSTREAM_UNAVAILABLE")  # no ErrorInfo
        assert service.process is not None
        # The kill was sent from gRPC's request thread, which may still be reaping the child.
        assert service.process.wait(timeout=30) == -signal.SIGKILL
        assert [p.exists() for p in left_behind] == [True]  # the crash left a temp file

        service.start()  # waits for health SERVING

        assert service.tmp_files() == []
        with service.channel() as channel:
            stub = pb_grpc.SnapshotStoreServiceStub(channel)
            assert absent(stub, big)
            assert code_reason(failure(lambda: read(stub, big))) == ("NOT_FOUND", "BLOB_NOT_FOUND")
            assert not service.blob_path(big).exists()
            assert b"".join(read(stub, kept)) == kept_data
            assert b"".join(read(stub, loose)) == loose_data
            assert usage(stub, TENANT) == before  # the killed upload's reference never landed

            again = stub.PutBlob(
                requests(big_object(seed), size=BIG_CHUNKS * MIB, digest=big, ref_name="big"),
                timeout=120,
                metadata=as_tenant(TENANT),
            )
            assert (again.blob.digest, again.blob.size_bytes) == (big, BIG_CHUNKS * MIB)
            assert again.deduplicated is False
            check, count = blake3.blake3(), 0
            for message in stub.GetBlob(pb.GetBlobRequest(digest=big), timeout=120):
                assert len(message.chunk) <= MIB
                check.update(message.chunk)
                count += 1
            assert (check.hexdigest(), count) == (big, BIG_CHUNKS)
            assert usage(stub, TENANT) == (before[0] + BIG_CHUNKS * MIB, 2, 2)
            assert service.tmp_files() == []
    finally:
        service.stop()


def test_sigkill_of_an_idle_store_loses_nothing(tmp_path: Path) -> None:
    service = SnapshotProcess(tmp_path).start()
    try:
        with service.channel() as channel:
            stub = pb_grpc.SnapshotStoreServiceStub(channel)
            stored = {put(stub, bytes([n]) * 5000, ref_name=f"r{n}").blob.digest for n in range(5)}
        service.kill()
        service.start()
        with service.channel() as channel:
            stub = pb_grpc.SnapshotStoreServiceStub(channel)
            for digest in stored:
                assert blake3.blake3(b"".join(read(stub, digest))).hexdigest() == digest
            assert usage(stub, "default")[1:] == (5, 5)
            response = stub.CollectGarbage(pb.CollectGarbageRequest(), timeout=10)
            assert response.deleted_count == 0
    finally:
        service.stop()
