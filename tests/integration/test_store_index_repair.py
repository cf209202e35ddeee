"""The store's index is checked when the process starts: a damaged one turns garbage
collection off (FAILED_PRECONDITION, INDEX_DAMAGED; the `.index` health name NOT_SERVING)
while blobs are still served; a malformed one stops the start with the way back in the log;
`python -m tensorwasm_snapshot rebuild-index` then makes a working store of the same blobs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as pb_grpc
from tensorwasm_snapshot.object_store import INDEX_FILE
from tensorwasm_snapshot.server import INDEX_HEALTH_NAME

from tests.integration.test_store_service import SnapshotProcess, collect, failure, put, read
from tests.unit.snapshot.test_index_repair import damage_the_refs_by_digest_index

pytestmark = pytest.mark.integration

MODULE = b"\0asm a live module" * 100


def index_health(address: str) -> str:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=INDEX_HEALTH_NAME), timeout=10
        )
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def rebuild(store: SnapshotProcess) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", "tensorwasm_snapshot", "rebuild-index"],
        env={**os.environ, "TENSORWASM_SNAPSHOT_DATA_DIR": str(store.data_dir / "store")},
        capture_output=True,
        timeout=120,
        check=True,
    )
    report: dict[str, object] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    return report


def test_a_damaged_index_refuses_gc_and_the_rebuild_restores_the_store(tmp_path: Path) -> None:
    store = SnapshotProcess(tmp_path, {"gc_grace_seconds": "0"})
    store.start()
    with store.channel() as channel:
        stub = pb_grpc.SnapshotStoreServiceStub(channel)
        digest = put(stub, MODULE, ref_name="functions/add", tenant="acme").blob.digest
        assert index_health(store.address) == "SERVING"
    store.stop()

    damage_the_refs_by_digest_index(tmp_path / "store", digest)
    store.start()
    with store.channel() as channel:
        stub = pb_grpc.SnapshotStoreServiceStub(channel)
        error = failure(lambda: collect(stub))
        assert (error.code.name, error.reason) == ("FAILED_PRECONDITION", "INDEX_DAMAGED")
        assert index_health(store.address) == "NOT_SERVING"
        assert b"".join(read(stub, digest)) == MODULE  # still served: only GC is off
    store.stop()

    report = rebuild(store)
    assert (report["objects"], report["damaged"], report["references"]) == (1, 0, 1)
    store.start()
    with store.channel() as channel:
        stub = pb_grpc.SnapshotStoreServiceStub(channel)
        assert index_health(store.address) == "SERVING"
        assert collect(stub) == 0
        assert b"".join(read(stub, digest)) == MODULE
    store.stop()


def test_a_malformed_index_stops_the_start_until_it_is_rebuilt(tmp_path: Path) -> None:
    store = SnapshotProcess(tmp_path, {"gc_grace_seconds": "0"})
    store.start()
    with store.channel() as channel:
        stub = pb_grpc.SnapshotStoreServiceStub(channel)
        digests = [put(stub, MODULE + bytes([n]), ref_name=f"m{n}").blob.digest for n in range(3)]
    store.stop()
    path = tmp_path / "store" / INDEX_FILE
    path.write_bytes(path.read_bytes()[:1000] + b"\xff" * 3000)

    with pytest.raises(AssertionError):
        store.start(timeout_seconds=60)  # the process exits instead of serving
    assert store.process is not None
    deadline = time.monotonic() + 60
    while store.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert store.process.returncode not in (None, 0)
    assert "rebuild-index" in (tmp_path / "snapshot.log").read_text()

    assert rebuild(store)["objects"] == 3
    store.start()
    with store.channel() as channel:
        stub = pb_grpc.SnapshotStoreServiceStub(channel)
        assert index_health(store.address) == "SERVING"
        assert collect(stub) == 0  # held by the rebuild until an operator releases them
        for n, digest in enumerate(digests):
            assert b"".join(read(stub, digest)) == MODULE + bytes([n])
    store.stop()
