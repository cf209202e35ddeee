"""A snapshot store killed with SIGKILL during CreateSnapshot restarts cleanly: the record is
whole or absent (absent: it was never acknowledged), no temp or spool file is left, no
reference of the record's blob dangles (usage is as before), and earlier records are intact.

Two real kill points: while the payload is still streaming in (spooled to memory, then an
unlinked temp file, which the kernel frees), and after the whole payload was sent, while the
store writes the sealed record blob under `tmp/` (the restart removes that temp file).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import pytest
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as pb_grpc

from tests.integration.test_store_service import (
    MIB,
    SnapshotProcess,
    as_tenant,
    code_reason,
    failure,
    usage,
)

pytestmark = pytest.mark.integration

TENANT = "snapcrash"
FINGERPRINT = "engine-crash-test"
BIG_CHUNKS = 160  # 160 MiB, incompressible


def payload(seed: int, chunks: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(chunks):
        yield rng.randbytes(MIB)


def header(source: str, size: int) -> pb.CreateSnapshotRequest:
    return pb.CreateSnapshotRequest(
        header=pb.CreateSnapshotHeader(
            kind=pb.SNAPSHOT_KIND_INSTANCE_IMAGE,
            engine_fingerprint=FINGERPRINT,
            source_digest=source,
            variant="wizer.initialize",
            payload_size_bytes=size,
        )
    )


def create(
    stub: pb_grpc.SnapshotStoreServiceStub, source: str, chunks: Iterator[bytes], size: int
) -> pb.Snapshot:
    def messages() -> Iterator[pb.CreateSnapshotRequest]:
        yield header(source, size)
        for chunk in chunks:
            yield pb.CreateSnapshotRequest(chunk=chunk)

    response: pb.CreateSnapshotResponse = stub.CreateSnapshot(
        messages(), timeout=120, metadata=as_tenant(TENANT)
    )
    return response.snapshot


def read_payload(stub: pb_grpc.SnapshotStoreServiceStub, snapshot_id: str) -> bytes:
    request = pb.ReadSnapshotRequest(id=snapshot_id, expected_engine_fingerprint=FINGERPRINT)
    messages = stub.ReadSnapshot(request, timeout=120, metadata=as_tenant(TENANT))
    return b"".join(message.chunk for message in messages)


def records(stub: pb_grpc.SnapshotStoreServiceStub) -> list[pb.Snapshot]:
    request = pb.ListSnapshotsRequest(page_size=100)
    return list(stub.ListSnapshots(request, timeout=10, metadata=as_tenant(TENANT)).snapshots)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.005)


@pytest.mark.parametrize("moment", ["mid-upload", "mid-seal"])
def test_sigkill_during_create_snapshot_leaves_all_or_nothing(tmp_path: Path, moment: str) -> None:
    seed = random.randrange(1 << 32)
    big_source = blake3.blake3(f"big {seed}".encode()).hexdigest()
    kept_source = blake3.blake3(f"kept {seed}".encode()).hexdigest()
    service = SnapshotProcess(tmp_path).start()
    try:
        with service.channel() as channel:
            stub = pb_grpc.SnapshotStoreServiceStub(channel)
            kept_data = b"".join(payload(seed + 1, 3))
            kept = create(stub, kept_source, iter([kept_data]), len(kept_data))
            before = usage(stub, TENANT)
            assert before[1:] == (1, 1)

            def upload() -> Iterator[bytes]:
                for index, chunk in enumerate(payload(seed, BIG_CHUNKS)):
                    if moment == "mid-upload" and index == BIG_CHUNKS // 2:
                        time.sleep(0.5)  # the store consumes what was sent (an unlinked spool)
                        service.kill()
                        return
                    yield chunk
                if moment == "mid-seal":  # the store now seals and writes the record blob

                    def sealing() -> bool:
                        try:
                            return any(p.stat().st_size >= 16 * MIB for p in service.tmp_files())
                        except FileNotFoundError:  # renamed into place between list and stat
                            return False

                    def kill_while_sealing() -> None:
                        wait_for(sealing, "the record blob's temp file at 16 MiB")
                        service.kill()

                    threading.Thread(target=kill_while_sealing, daemon=True).start()

            error = failure(lambda: create(stub, big_source, upload(), BIG_CHUNKS * MIB))
            assert code_reason(error) == ("UNAVAILABLE", "UPSTREAM_UNAVAILABLE")
        assert service.process is not None
        service.process.wait(timeout=30)
        if moment == "mid-seal":
            assert service.tmp_files() != []  # the crash left the record blob's temp file

        service.start()

        assert service.tmp_files() == []
        with service.channel() as channel:
            stub = pb_grpc.SnapshotStoreServiceStub(channel)
            assert [r.id for r in records(stub)] == [kept.id]  # nothing of the killed create
            assert usage(stub, TENANT) == before  # and no reference of it dangles
            assert read_payload(stub, kept.id) == kept_data
            again = create(stub, big_source, payload(seed, BIG_CHUNKS), BIG_CHUNKS * MIB)
            check = blake3.blake3()
            for chunk in payload(seed, BIG_CHUNKS):
                check.update(chunk)
            assert (again.payload_digest, again.payload_size_bytes) == (
                check.hexdigest(),
                BIG_CHUNKS * MIB,
            )
            assert blake3.blake3(read_payload(stub, again.id)).hexdigest() == check.hexdigest()
            assert sorted(r.id for r in records(stub)) == sorted([kept.id, again.id])
            assert usage(stub, TENANT)[1:] == (2, 2)
            assert service.tmp_files() == []
    finally:
        service.stop()
