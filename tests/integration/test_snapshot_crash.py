"""A snapshot store killed with SIGKILL during CreateSnapshot restarts cleanly: the record is
whole or absent (absent: it was never acknowledged), no temp or spool file is left, no
reference of the record's blob dangles (usage is as before), and earlier records are intact.

Two real kill points: while the payload is still streaming in (spooled to memory, then an
unlinked temp file, which the kernel frees), and after the whole payload was sent, while the
store writes the sealed record blob under `tmp/` (the restart removes that temp file). The
window between the record blob's commit and its index row is too narrow for a kill from
outside: a child process dies exactly there, and the store is restarted on what it left.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import pytest
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as pb_grpc
from tensorwasm_common.errors import SnapshotNotFoundError
from tensorwasm_snapshot.object_store import SnapshotStore
from tensorwasm_snapshot.records import SnapshotRecords

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


# --- the crash window between the record blob's commit and its index row ---
#
# A create commits the record blob with its reference (`snapshots/<id>`) and then inserts the
# row; a kill between the two is too narrow to hit from outside, so a child process runs a
# real create and dies (`os._exit`: no handler, no finally, no clean close) exactly where the
# row would be written. What it leaves on disk is what such a crash leaves.

_DIE_BEFORE_ROW = """
import json, os, sys
from pathlib import Path
from tensorwasm_snapshot.records import SnapshotRecords
from tensorwasm_snapshot.record_index import RecordIndex
from tensorwasm_snapshot.object_store import SnapshotStore

root, tenant, fingerprint, source, payload_path = sys.argv[1:]
store = SnapshotStore.open(Path(root))
records = SnapshotRecords(store)

def die(self, row):
    print(json.dumps({"id": row.id, "record_digest": row.record_digest}), flush=True)
    os._exit(137)

RecordIndex.put = die
payload = Path(payload_path).read_bytes()
creator = records.creator(tenant, kind=2, engine_fingerprint=fingerprint, source_digest=source,
                          variant="wizer.initialize", payload_size_bytes=len(payload))
creator.write(payload)
creator.commit()
raise SystemExit("the index row was written")
"""


def die_before_row(root: Path, source: str, data: bytes) -> tuple[str, str]:
    """Runs a create that dies before its row; -> (snapshot id, record blob digest)."""
    payload_file = root.parent / "payload.bin"
    payload_file.write_bytes(data)
    argv = [str(root), TENANT, FINGERPRINT, source, str(payload_file)]
    child = subprocess.run(
        [sys.executable, "-c", _DIE_BEFORE_ROW, *argv],
        check=False,
        capture_output=True,
        timeout=120,
    )
    assert child.returncode == 137, child.stderr.decode()
    left = json.loads(child.stdout)
    return str(left["id"]), str(left["record_digest"])


def test_crash_between_record_blob_and_row_reconciles_in_process(tmp_path: Path) -> None:
    root, clock = tmp_path / "store", [time.time_ns()]
    kept_data, lost_data = os.urandom(3 * MIB), os.urandom(2 * MIB + 1)
    kept_source, lost_source = "aa" * 32, "bb" * 32
    store = SnapshotStore.open(root, gc_grace_seconds=60, clock=lambda: clock[0])
    records = SnapshotRecords(store, clock=lambda: clock[0])
    kept = records.creator(
        TENANT,
        kind=2,
        engine_fingerprint=FINGERPRINT,
        source_digest=kept_source,
        variant="wizer.initialize",
        payload_size_bytes=len(kept_data),
    )
    kept.write(kept_data)
    kept_row = kept.commit()
    before = store.usage(TENANT)
    store.close()

    lost_id, lost_digest = die_before_row(root, lost_source, lost_data)
    clock[0] = time.time_ns()  # after the child's writes, which used the real clock

    # The state the crash left: the record blob installed, indexed and referenced; no row.
    assert (root / "blobs" / lost_digest[:2] / lost_digest).is_file()
    store = SnapshotStore.open(root, gc_grace_seconds=60, clock=lambda: clock[0])
    try:
        assert lost_digest in store.index.digests()  # the store itself had nothing to repair
        records = SnapshotRecords(store, clock=lambda: clock[0])
        assert records.index.orphan_refs() == [(TENANT, lost_digest, f"snapshots/{lost_id}")]

        assert records.reconcile() == 1  # what build_server runs before serving
        assert records.index.orphan_refs() == []
        assert store.usage(TENANT) == before  # no reference dangles, nothing extra charged
        assert not store.index.holds(TENANT, lost_digest)
        with pytest.raises(SnapshotNotFoundError):
            records.get(TENANT, lost_id)
        with pytest.raises(SnapshotNotFoundError):
            records.find(TENANT, 2, lost_source, "wizer.initialize", FINGERPRINT)
        assert [r.id for r in records.list(TENANT)[0]] == [kept_row.id]
        assert list((root / "tmp").iterdir()) == []  # no temp or spool file survives

        assert store.collect_garbage().deleted_count == 0  # within the grace period
        clock[0] += 61 * 10**9
        assert store.collect_garbage().deleted_count == 1  # the released record blob
        assert not (root / "blobs" / lost_digest[:2] / lost_digest).exists()
        assert records.reconcile() == 0

        _, chunks = records.open_payload(TENANT, kept_row.id, FINGERPRINT)
        assert b"".join(chunks) == kept_data
        again = records.creator(
            TENANT,
            kind=2,
            engine_fingerprint=FINGERPRINT,
            source_digest=lost_source,
            variant="wizer.initialize",
            payload_size_bytes=len(lost_data),
        )
        again.write(lost_data)
        row = again.commit()
        _, chunks = records.open_payload(TENANT, row.id, FINGERPRINT)
        assert b"".join(chunks) == lost_data
        assert store.usage(TENANT).ref_count == 2
    finally:
        store.close()


def test_crash_between_record_blob_and_row_restarts_the_service_cleanly(tmp_path: Path) -> None:
    service = SnapshotProcess(tmp_path, {"gc_grace_seconds": "0"}).start()
    try:
        kept_data, lost_data = os.urandom(MIB), os.urandom(MIB + 3)
        kept_source, lost_source = "cc" * 32, "dd" * 32
        with service.channel() as channel:
            stub = pb_grpc.SnapshotStoreServiceStub(channel)
            kept = create(stub, kept_source, iter([kept_data]), len(kept_data))
            before = usage(stub, TENANT)
        service.stop()

        lost_id, lost_digest = die_before_row(tmp_path / "store", lost_source, lost_data)

        service.start()
        with service.channel() as channel:
            stub = pb_grpc.SnapshotStoreServiceStub(channel)
            assert usage(stub, TENANT) == before  # the orphan reference was released
            assert [r.id for r in records(stub)] == [kept.id]
            missing = failure(
                lambda: stub.GetSnapshot(
                    pb.GetSnapshotRequest(id=lost_id), timeout=10, metadata=as_tenant(TENANT)
                )
            )
            assert code_reason(missing) == ("NOT_FOUND", "SNAPSHOT_NOT_FOUND")
            gc = stub.CollectGarbage(pb.CollectGarbageRequest(), timeout=30)
            assert gc.deleted_count == 1 and gc.deleted_size_bytes > len(lost_data) // 2
            gone = failure(
                lambda: stub.StatBlob(pb.StatBlobRequest(digest=lost_digest), timeout=10)
            )
            assert code_reason(gone) == ("NOT_FOUND", "BLOB_NOT_FOUND")
            assert read_payload(stub, kept.id) == kept_data
            again = create(stub, lost_source, iter([lost_data]), len(lost_data))
            assert read_payload(stub, again.id) == lost_data
            assert usage(stub, TENANT)[1:] == (2, 2)
    finally:
        service.stop()
