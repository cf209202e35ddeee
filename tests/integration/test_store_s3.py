"""The snapshot store as real processes on real engines: blobs in SeaweedFS, the index in
PostgreSQL. Two replicas behind one address serve the same objects; a bucket or database
that is wrong or unreachable stops the store at start naming the setting; an object store
that dies mid-run answers UNAVAILABLE (OBJECT_STORE_UNAVAILABLE, RetryInfo) and leaves no
half-written object or reference.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import grpc
import pytest
from tensorwasm.common.v1.service_token import with_service_token
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as pb_grpc
from tensorwasm_client.stack import health
from tensorwasm_common.status import error_from_rpc

from tests.engines.seaweedfs import SeaweedFS, free_ports
from tests.integration.test_store_service import (
    MIB,
    SnapshotProcess,
    as_tenant,
    code_reason,
    failure,
    put,
    read,
    usage,
)

pytestmark = [pytest.mark.integration, pytest.mark.engines]


def start_store(
    data_dir: Path,
    seaweedfs: SeaweedFS,
    bucket: str,
    database_url: str,
    token: str | None = None,
    **settings: str,
) -> SnapshotProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    service = SnapshotProcess(
        data_dir,
        {
            "blob_url": seaweedfs.blob_url(bucket),
            "database_url": database_url,
            "gc_grace_seconds": "0",
            **settings,
        },
        env=seaweedfs.env(),
    )
    if token is not None:  # replicas of one fleet share its service token
        service.token = token
    return service.start()


def refused_at_start(
    tmp_path: Path, env: dict[str, str], settings: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Runs the store with these settings and returns the finished process (it must stop)."""
    return subprocess.run(
        [sys.executable, "-m", "tensorwasm_snapshot"],
        env={
            **os.environ,
            **env,
            "OTEL_TRACES_EXPORTER": "none",
            "TENSORWASM_SNAPSHOT_LISTEN_ADDRESS": "127.0.0.1:0",
            "TENSORWASM_SNAPSHOT_METRICS_ADDRESS": "",
            "TENSORWASM_SNAPSHOT_DATA_DIR": str(tmp_path / "store"),
            **{f"TENSORWASM_SNAPSHOT_{k.upper()}": v for k, v in settings.items()},
        },
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_two_replicas_behind_one_address_serve_the_same_objects(
    tmp_path: Path, seaweedfs: SeaweedFS, postgres_url: str
) -> None:
    bucket = seaweedfs.create_bucket("replicas")
    first = start_store(tmp_path / "a", seaweedfs, bucket, postgres_url)
    second = start_store(tmp_path / "b", seaweedfs, bucket, postgres_url, token=first.token)
    try:
        # One target, two replicas: round robin spreads the calls over both.
        target = f"ipv4:{first.address},{second.address}"
        raw = grpc.insecure_channel(target, options=[("grpc.lb_policy_name", "round_robin")])
        with with_service_token(raw, first.token) as channel:
            stub = pb_grpc.SnapshotStoreServiceStub(channel)
            blobs = [os.urandom(200_000 + i) for i in range(6)]
            digests = [
                put(stub, b, tenant="acme", ref_name=f"r{i}").blob.digest
                for i, b in enumerate(blobs)
            ]
            for _ in range(2):  # each blob read through both replicas
                assert [b"".join(read(stub, d)) for d in digests] == blobs
            assert usage(stub, "acme") == (sum(map(len, blobs)), 6, 6)

            # A replica dies: the other keeps serving every object and reference.
            first.kill()
            deadline = time.monotonic() + 60
            while True:
                try:
                    assert [b"".join(read(stub, d)) for d in digests] == blobs
                    break
                except grpc.RpcError:
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
            assert usage(stub, "acme") == (sum(map(len, blobs)), 6, 6)
    finally:
        first.stop()
        second.stop()


def test_a_wrong_bucket_endpoint_or_database_stops_the_store_at_start(
    tmp_path: Path, seaweedfs: SeaweedFS
) -> None:
    (dead_port,) = free_ports(1)
    database = f"sqlite://{tmp_path}/index.sqlite3"
    cases = [
        ({"blob_url": seaweedfs.blob_url("no-such-bucket"), "database_url": database},
         seaweedfs.env(), "TENSORWASM_SNAPSHOT_BLOB_URL", "does not exist"),
        ({"blob_url": f"s3://some-bucket/p?endpoint=http://127.0.0.1:{dead_port}",
          "database_url": database}, seaweedfs.env(), "TENSORWASM_SNAPSHOT_BLOB_URL",
         "cannot reach"),
        ({"blob_url": seaweedfs.blob_url(seaweedfs.create_bucket("creds")),
          "database_url": database}, {**seaweedfs.env(), "AWS_SECRET_ACCESS_KEY": "wrong"},
         "TENSORWASM_SNAPSHOT_BLOB_URL", "denied"),
        ({"database_url": f"postgresql://tensorwasm:x@127.0.0.1:{dead_port}/store"}, {},
         "TENSORWASM_SNAPSHOT_DATABASE_URL", "cannot connect"),
    ]  # fmt: skip
    with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:  # the starts overlap
        runs = list(
            pool.map(
                lambda n: refused_at_start(tmp_path / f"case-{n}", cases[n][1], cases[n][0]),
                range(len(cases)),
            )
        )
    for (_settings, _env, setting, why), finished in zip(cases, runs, strict=True):
        assert finished.returncode == 2, finished.stderr
        assert setting in finished.stderr and why in finished.stderr, finished.stderr
        assert "Traceback" not in finished.stderr


@pytest.fixture
def own_seaweedfs(tmp_path: Path) -> Iterator[SeaweedFS]:
    """A SeaweedFS of this test's own, to kill."""
    server = SeaweedFS(tmp_path / "seaweedfs").start()
    try:
        yield server
    finally:
        server.stop()


def test_an_object_store_that_dies_mid_run_answers_unavailable_and_half_writes_nothing(
    tmp_path: Path, own_seaweedfs: SeaweedFS, postgres_url: str
) -> None:
    bucket = own_seaweedfs.create_bucket("faults")
    store = start_store(tmp_path / "store", own_seaweedfs, bucket, postgres_url)
    try:
        with store.channel() as channel:
            stub = pb_grpc.SnapshotStoreServiceStub(channel)
            kept = os.urandom(100_000)
            kept_digest = put(stub, kept, tenant="acme", ref_name="kept").blob.digest

            # A put in flight when the object store dies: header and half the body first.
            doomed = os.urandom(12 * MIB)
            doomed_digest = blake3.blake3(doomed).hexdigest()
            half_sent, go_on = threading.Event(), threading.Event()

            def messages() -> Iterator[pb.PutBlobRequest]:
                header = pb.PutBlobHeader(size_bytes=len(doomed), ref_name="doomed")
                yield pb.PutBlobRequest(header=header)
                for i in range(0, len(doomed), MIB):
                    if i == 6 * MIB:
                        half_sent.set()
                        go_on.wait(60)
                    yield pb.PutBlobRequest(chunk=doomed[i : i + MIB])

            outcome: list[object] = []

            def upload() -> None:
                try:
                    stub.PutBlob(messages(), timeout=120, metadata=as_tenant("acme"))
                    outcome.append("stored")
                except grpc.RpcError as exc:
                    outcome.append(exc)

            uploader = threading.Thread(target=upload)
            uploader.start()
            assert half_sent.wait(60)
            own_seaweedfs.kill()
            go_on.set()
            uploader.join(120)
            assert len(outcome) == 1 and isinstance(outcome[0], grpc.RpcError)
            error = error_from_rpc(outcome[0])
            assert code_reason(error) == ("UNAVAILABLE", "OBJECT_STORE_UNAVAILABLE")
            assert error.retry_after_seconds is not None and error.retry_after_seconds > 0
            assert error.metadata == {"operation": "put"}
            assert str(own_seaweedfs.ports["s3.port"]) not in error.message  # no endpoint leaks

            # Reads and new puts answer the same while it is down; the index is untouched.
            error = failure(lambda: read(stub, kept_digest))
            assert code_reason(error) == ("UNAVAILABLE", "OBJECT_STORE_UNAVAILABLE")
            assert error.retry_after_seconds is not None
            error = failure(lambda: put(stub, b"while down", tenant="acme", ref_name="late"))
            assert code_reason(error) == ("UNAVAILABLE", "OBJECT_STORE_UNAVAILABLE")
            assert usage(stub, "acme") == (len(kept), 1, 1)
            deadline = time.monotonic() + 60
            while health(store.address) == "SERVING":  # the health check asks the bucket
                assert time.monotonic() < deadline
                time.sleep(0.1)

            # Back again: the kept object is whole, the doomed one was never stored.
            own_seaweedfs.start()
            deadline = time.monotonic() + 60
            while health(store.address) != "SERVING":
                assert time.monotonic() < deadline
                time.sleep(0.1)
            # Its volume server reports its volumes to its master a moment after S3 answers:
            # until then a read is still UNAVAILABLE, as a client retrying after RetryInfo sees.
            deadline = time.monotonic() + 60
            while True:
                try:
                    assert b"".join(read(stub, kept_digest)) == kept
                    break
                except grpc.RpcError as exc:
                    assert code_reason(error_from_rpc(exc))[1] == "OBJECT_STORE_UNAVAILABLE"
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
            error = failure(
                lambda: stub.StatBlob(pb.StatBlobRequest(digest=doomed_digest), timeout=10)
            )
            assert code_reason(error) == ("NOT_FOUND", "BLOB_NOT_FOUND")
            listed = own_seaweedfs.client().list_objects_v2(Bucket=bucket)
            assert [o["Key"].rsplit("/", 1)[1] for o in listed.get("Contents", [])] == [kept_digest]
            assert usage(stub, "acme") == (len(kept), 1, 1)
    finally:
        store.stop()
