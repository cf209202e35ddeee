"""The snapshot store over real gRPC, as its own process: streaming, the size and bomb guards,
tenant quotas, references and garbage collection. Every error is checked by code and reason.

Each group of tests starts the service with the settings it needs (`python -m
tensorwasm_snapshot`, ephemeral port, ready file, then health SERVING).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import blake3
import grpc
import pytest
from tensorwasm.common.v1.service_token import with_service_token
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as pb_grpc
from tensorwasm_client.stack import health
from tensorwasm_common.blob_client import BlobClient
from tensorwasm_common.channels import open_channel
from tensorwasm_common.errors import ServiceError
from tensorwasm_common.status import error_from_rpc

pytestmark = pytest.mark.integration

MIB = 1 << 20
TENANT_KEY = "x-tensorwasm-tenant"


class SnapshotProcess:
    """One snapshot service process on a data directory; restartable, killable."""

    def __init__(
        self,
        data_dir: Path,
        settings: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.settings = dict(settings or {})
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.address = ""
        # The service token it requires (the check is on, as in a fleet).
        self.token = secrets.token_urlsafe(32)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout_seconds: float = 60.0) -> SnapshotProcess:
        ready = self.data_dir / "snapshot.ready.json"
        ready.unlink(missing_ok=True)
        env = {
            **os.environ,
            "OTEL_TRACES_EXPORTER": "none",
            "PYTHONUNBUFFERED": "1",
            "TENSORWASM_SNAPSHOT_LISTEN_ADDRESS": "127.0.0.1:0",
            "TENSORWASM_SNAPSHOT_METRICS_ADDRESS": "",
            "TENSORWASM_SNAPSHOT_READY_FILE": str(ready),
            "TENSORWASM_SNAPSHOT_DATA_DIR": str(self.data_dir / "store"),
            "TENSORWASM_SNAPSHOT_SERVICE_TOKEN_FILE": str(self._token_file()),
            **{f"TENSORWASM_SNAPSHOT_{k.upper()}": v for k, v in self.settings.items()},
            **self.env,
        }
        log = self.data_dir / "snapshot.log"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tensorwasm_snapshot"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout_seconds
        while not ready.exists():
            assert self.process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no ready file"
            time.sleep(0.05)
        self.address = json.loads(ready.read_text())["grpc_address"]
        while health(self.address) != "SERVING":
            assert self.process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def peak_rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM")

    def tmp_files(self) -> list[Path]:
        return sorted((self.data_dir / "store" / "tmp").iterdir())

    def blob_path(self, digest: str) -> Path:
        return self.data_dir / "store" / "blobs" / digest[:2] / digest

    def _token_file(self) -> Path:
        path = self.data_dir / "service-token"
        path.write_text(self.token)
        path.chmod(0o600)
        return path

    def channel(self) -> grpc.Channel:
        """A blocking channel that sends the service token."""
        raw = grpc.insecure_channel(
            self.address, options=[("grpc.max_receive_message_length", 64 * MIB)]
        )
        return with_service_token(raw, self.token)

    def aio_channel(self) -> grpc.aio.Channel:
        """An asyncio channel that sends the service token."""
        return open_channel(self.address, service_token=self.token)


Launch = Callable[..., SnapshotProcess]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """Starts snapshot processes on sub-directories of tmp_path; stops them all at teardown."""
    started: list[SnapshotProcess] = []

    def start(
        name: str = "store", env: dict[str, str] | None = None, **settings: str
    ) -> SnapshotProcess:
        service = SnapshotProcess(tmp_path / name, settings, env)
        service.data_dir.mkdir(exist_ok=True)
        started.append(service)
        return service.start()

    yield start
    for service in started:
        service.stop()


def module_service(
    factory: pytest.TempPathFactory, name: str, settings: dict[str, str]
) -> Iterator[SnapshotProcess]:
    service = SnapshotProcess(factory.mktemp(name), settings).start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SnapshotProcess]:
    """Default grace (an hour) and no quota; objects capped at 8 MiB."""
    yield from module_service(tmp_path_factory, "plain", {"max_blob_bytes": str(8 * MIB)})


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SnapshotProcess]:
    """No grace (unreferenced objects are collectable at once) and a 4 MiB quota per tenant."""
    settings = {"gc_grace_seconds": "0", "tenant_quota_bytes": str(4 * MIB)}
    yield from module_service(tmp_path_factory, "strict", settings)


@pytest.fixture(scope="module")
def plain_stub(plain: SnapshotProcess) -> Iterator[pb_grpc.SnapshotStoreServiceStub]:
    with plain.channel() as channel:
        yield pb_grpc.SnapshotStoreServiceStub(channel)


@pytest.fixture(scope="module")
def strict_stub(strict: SnapshotProcess) -> Iterator[pb_grpc.SnapshotStoreServiceStub]:
    with strict.channel() as channel:
        yield pb_grpc.SnapshotStoreServiceStub(channel)


def as_tenant(tenant: str) -> tuple[tuple[str, str], ...]:
    return ((TENANT_KEY, tenant),)


def requests(
    chunks: Iterable[bytes], *, size: int = 0, digest: str = "", ref_name: str = ""
) -> Iterator[pb.PutBlobRequest]:
    header = pb.PutBlobHeader(expected_digest=digest, size_bytes=size, ref_name=ref_name)
    yield pb.PutBlobRequest(header=header)
    for chunk in chunks:
        yield pb.PutBlobRequest(chunk=chunk)


def put(
    stub: pb_grpc.SnapshotStoreServiceStub,
    data: bytes,
    *,
    ref_name: str = "",
    tenant: str = "default",
    declare: bool = True,
) -> pb.PutBlobResponse:
    chunks = (data[i : i + MIB] for i in range(0, len(data), MIB))
    response: pb.PutBlobResponse = stub.PutBlob(
        requests(chunks, size=len(data) if declare else 0, ref_name=ref_name),
        timeout=60,
        metadata=as_tenant(tenant),
    )
    return response


def read(stub: pb_grpc.SnapshotStoreServiceStub, digest: str) -> list[bytes]:
    return [m.chunk for m in stub.GetBlob(pb.GetBlobRequest(digest=digest), timeout=60)]


def failure(call: Callable[[], object]) -> ServiceError:
    """The ServiceError (code, reason, metadata) that `call` failed with."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return error_from_rpc(caught.value)


def code_reason(error: ServiceError) -> tuple[str, str]:
    return error.code.name, error.reason


def absent(stub: pb_grpc.SnapshotStoreServiceStub, digest: str) -> bool:
    error = failure(lambda: stub.StatBlob(pb.StatBlobRequest(digest=digest), timeout=10))
    assert code_reason(error) == ("NOT_FOUND", "BLOB_NOT_FOUND")
    return True


def usage(stub: pb_grpc.SnapshotStoreServiceStub, tenant: str) -> tuple[int, int, int]:
    got = stub.GetUsage(pb.GetUsageRequest(), timeout=10, metadata=as_tenant(tenant))
    assert got.tenant == tenant
    return got.size_bytes, got.object_count, got.ref_count


def add_ref(stub: pb_grpc.SnapshotStoreServiceStub, tenant: str, digest: str, name: str) -> bool:
    request = pb.AddRefRequest(digest=digest, ref_name=name)
    return bool(stub.AddRef(request, timeout=10, metadata=as_tenant(tenant)).created)


def remove_ref(stub: pb_grpc.SnapshotStoreServiceStub, tenant: str, digest: str, name: str) -> bool:
    request = pb.RemoveRefRequest(digest=digest, ref_name=name)
    return bool(stub.RemoveRef(request, timeout=10, metadata=as_tenant(tenant)).removed)


def refused_after_header(
    service: SnapshotProcess, header: pb.PutBlobHeader, tenant: str = "default"
) -> tuple[ServiceError, int]:
    """Sends only a header, then holds the stream open: the error must come without a body.

    Returns the error and how many chunks the server had pulled from the stream (0).
    """
    release, pulled = threading.Event(), [0]

    def messages() -> Iterator[pb.PutBlobRequest]:
        yield pb.PutBlobRequest(header=header)
        release.wait(30)  # a server that waited for the body would time the call out
        pulled[0] += 1
        yield pb.PutBlobRequest(chunk=b"x" * MIB)

    with service.channel() as channel:
        stub = pb_grpc.SnapshotStoreServiceStub(channel)
        try:
            error = failure(
                lambda: stub.PutBlob(messages(), timeout=15, metadata=as_tenant(tenant))
            )
            # read before the release: once released, grpc's request thread (still waiting
            # in `messages`) may pull the chunk at any moment, answered call or not
            pulled_before = pulled[0]
        finally:
            release.set()
    return error, pulled_before


# --- streaming in bounded chunks ---


def test_64_mib_streams_through_in_bounded_chunks_and_memory(launch: Launch) -> None:
    # Two malloc arenas: the peak then measures what the server holds, not how glibc keeps
    # freed chunks in one arena per worker thread.
    service = launch("big", max_blob_bytes=str(256 * MIB), env={"MALLOC_ARENA_MAX": "2"})
    with service.channel() as channel:
        stub = pb_grpc.SnapshotStoreServiceStub(channel)
        put(stub, os.urandom(2 * MIB))  # warm up every code path before the baseline
        read(stub, put(stub, os.urandom(2 * MIB)).blob.digest)
        baseline = service.peak_rss_bytes()

        hasher, chunks = blake3.blake3(), 64

        def generated() -> Iterator[bytes]:
            for _ in range(chunks):
                chunk = os.urandom(MIB)  # incompressible
                hasher.update(chunk)
                yield chunk

        response = stub.PutBlob(requests(generated()), timeout=120)
        digest = hasher.hexdigest()
        assert (response.blob.digest, response.blob.size_bytes) == (digest, chunks * MIB)
        after_put = service.peak_rss_bytes()

        received, check = 0, blake3.blake3()
        for message in stub.GetBlob(pb.GetBlobRequest(digest=digest), timeout=120):
            assert len(message.chunk) <= MIB
            received += 1
            check.update(message.chunk)
        assert (received, check.hexdigest()) == (chunks, digest)
        after_get = service.peak_rss_bytes()

    # The server never holds the object: its peak memory grows by less than half of it.
    assert after_put - baseline < 32 * MIB, (baseline, after_put)
    assert after_get - baseline < 32 * MIB, (baseline, after_get)


def test_blob_client_streams_and_references(plain: SnapshotProcess) -> None:
    async def scenario() -> None:
        channel = plain.aio_channel()
        try:
            client = BlobClient(channel, tenant="client-test")
            data = os.urandom(3 * MIB + 5)
            digest = blake3.blake3(data).hexdigest()
            parts = [data[i : i + MIB] for i in range(0, len(data), MIB)]
            stored = await client.put_stream(parts, size_bytes=len(data), ref_name="r1")
            assert stored.blob.digest == digest
            assert await client.get(digest) == data
            assert [len(c) async for c in client.get_stream(digest)] == [MIB] * 3 + [5]
            assert (await client.put(data, expected_digest=digest)).deduplicated
            assert await client.add_ref(digest, "r1") is False
            assert await client.add_ref(digest, "r2") is True
            got = await client.usage()
            assert (got.size_bytes, got.object_count, got.ref_count) == (len(data), 1, 2)
            assert await client.remove_ref(digest, "r2", tenant="client-test") is True
            assert (await client.usage(tenant="someone-else")).ref_count == 0
        finally:
            await channel.close()

    asyncio.run(scenario())


# --- the size cap and the decompression-bomb guard (plain: 8 MiB cap) ---


def test_declared_size_over_the_cap_is_refused_before_the_body(plain: SnapshotProcess) -> None:
    error, pulled = refused_after_header(plain, pb.PutBlobHeader(size_bytes=8 * MIB + 1))
    assert code_reason(error) == ("INVALID_ARGUMENT", "TOO_LARGE")
    assert error.metadata == {"limit_bytes": str(8 * MIB)}
    assert pulled == 0
    assert plain.tmp_files() == []


def test_more_bytes_than_declared_are_refused(
    plain: SnapshotProcess, plain_stub: pb_grpc.SnapshotStoreServiceStub
) -> None:
    data = os.urandom(2 * MIB)
    error = failure(lambda: plain_stub.PutBlob(requests([data[:MIB], data[MIB:]], size=MIB + 1)))
    assert code_reason(error) == ("INVALID_ARGUMENT", "TOO_LARGE")
    assert error.metadata == {"limit_bytes": str(MIB + 1)}
    assert absent(plain_stub, blake3.blake3(data).hexdigest())
    assert plain.tmp_files() == []


def test_undeclared_upload_over_the_cap_is_cut_off(
    plain: SnapshotProcess, plain_stub: pb_grpc.SnapshotStoreServiceStub
) -> None:
    data = os.urandom(9 * MIB)
    error = failure(lambda: put(plain_stub, data, declare=False))
    assert code_reason(error) == ("INVALID_ARGUMENT", "TOO_LARGE")
    assert error.metadata == {"limit_bytes": str(8 * MIB)}
    assert absent(plain_stub, blake3.blake3(data).hexdigest())
    assert plain.tmp_files() == []


@pytest.mark.parametrize("declared", [1 << 40, 8 * MIB + 1, 2**64 - 1])
def test_stored_header_declaring_a_huge_size_is_data_loss(
    plain: SnapshotProcess, plain_stub: pb_grpc.SnapshotStoreServiceStub, declared: int
) -> None:
    data = os.urandom(MIB + 3)
    digest = put(plain_stub, data).blob.digest
    with plain.blob_path(digest).open("r+b") as fh:
        fh.seek(8)  # the plaintext size field of the header
        fh.write(struct.pack("<Q", declared))

    error = failure(lambda: read(plain_stub, digest))
    assert code_reason(error) == ("DATA_LOSS", "BLOB_INTEGRITY")
    assert error.metadata == {"digest": digest}
    stat_error = failure(lambda: plain_stub.StatBlob(pb.StatBlobRequest(digest=digest), timeout=10))
    assert code_reason(stat_error) == ("DATA_LOSS", "BLOB_INTEGRITY")
    # Putting the same bytes again replaces the damaged copy.
    assert put(plain_stub, data).deduplicated is False
    assert b"".join(read(plain_stub, digest)) == data


def test_stored_frame_expanding_past_its_declared_size_is_data_loss(
    plain: SnapshotProcess, plain_stub: pb_grpc.SnapshotStoreServiceStub
) -> None:
    import zstandard

    claimed = os.urandom(1000)
    digest = put(plain_stub, claimed).blob.digest
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 * MIB))  # 8x the cap, ~2 KiB
    header = struct.pack("<8sQi32sQ", b"TWBLOB\0\1", 1000, 3, bytes.fromhex(digest), len(bomb))
    plain.blob_path(digest).write_bytes(header + bomb)

    error = failure(lambda: read(plain_stub, digest))
    assert code_reason(error) == ("DATA_LOSS", "BLOB_INTEGRITY")
    assert error.metadata == {"digest": digest}


# --- quotas (strict: 4 MiB per tenant) ---


def test_add_ref_over_quota_is_refused_and_adds_nothing(
    strict_stub: pb_grpc.SnapshotStoreServiceStub,
) -> None:
    tenant = "quota-add-ref"
    first = put(strict_stub, os.urandom(3 * MIB), ref_name="first", tenant=tenant).blob
    second = put(strict_stub, os.urandom(2 * MIB)).blob  # unreferenced, so not charged
    assert usage(strict_stub, tenant) == (3 * MIB, 1, 1)

    error = failure(lambda: add_ref(strict_stub, tenant, second.digest, "second"))
    assert code_reason(error) == ("RESOURCE_EXHAUSTED", "TENANT_QUOTA_EXCEEDED")
    assert error.metadata == {
        "tenant": tenant,
        "quota_bytes": str(4 * MIB),
        "usage_bytes": str(3 * MIB),
        "requested_bytes": str(2 * MIB),
    }
    assert usage(strict_stub, tenant) == (3 * MIB, 1, 1)
    assert add_ref(strict_stub, tenant, first.digest, "alias") is True  # already charged: free
    assert add_ref(strict_stub, "quota-other", second.digest, "second") is True
    quota = strict_stub.GetUsage(pb.GetUsageRequest(), metadata=as_tenant(tenant)).quota_bytes
    assert quota == 4 * MIB


def test_put_over_quota_is_refused_before_the_body(
    strict: SnapshotProcess, strict_stub: pb_grpc.SnapshotStoreServiceStub
) -> None:
    tenant = "quota-put-declared"
    put(strict_stub, os.urandom(3 * MIB), ref_name="first", tenant=tenant)
    header = pb.PutBlobHeader(size_bytes=2 * MIB, ref_name="second")

    error, pulled = refused_after_header(strict, header, tenant)

    assert code_reason(error) == ("RESOURCE_EXHAUSTED", "TENANT_QUOTA_EXCEEDED")
    assert error.metadata["requested_bytes"] == str(2 * MIB)
    assert pulled == 0
    assert strict.tmp_files() == []
    assert usage(strict_stub, tenant) == (3 * MIB, 1, 1)


def test_undeclared_put_over_quota_stores_nothing(
    strict: SnapshotProcess, strict_stub: pb_grpc.SnapshotStoreServiceStub
) -> None:
    tenant = "quota-put-streamed"
    data = os.urandom(5 * MIB)
    error = failure(lambda: put(strict_stub, data, ref_name="big", tenant=tenant, declare=False))
    assert code_reason(error) == ("RESOURCE_EXHAUSTED", "TENANT_QUOTA_EXCEEDED")
    assert absent(strict_stub, blake3.blake3(data).hexdigest())
    assert strict.tmp_files() == []
    assert usage(strict_stub, tenant) == (0, 0, 0)


def test_bad_tenant_and_ref_names(strict_stub: pb_grpc.SnapshotStoreServiceStub) -> None:
    digest = put(strict_stub, os.urandom(100)).blob.digest
    error = failure(lambda: add_ref(strict_stub, "Not A Tenant", digest, "r"))
    assert code_reason(error) == ("INVALID_ARGUMENT", "INVALID_NAME")
    assert error.metadata["field"] == "tenant"
    error = failure(lambda: add_ref(strict_stub, "names", digest, ""))
    assert (code_reason(error), error.metadata["field"]) == (
        ("INVALID_ARGUMENT", "INVALID_NAME"),
        "ref_name",
    )
    error = failure(lambda: add_ref(strict_stub, "names", "nope", "r"))
    assert code_reason(error) == ("INVALID_ARGUMENT", "INVALID_DIGEST")
    error = failure(lambda: put(strict_stub, b"x", ref_name="bad name", tenant="names"))
    assert code_reason(error) == ("INVALID_ARGUMENT", "INVALID_NAME")


# --- references and garbage collection ---


def collect(stub: pb_grpc.SnapshotStoreServiceStub) -> int:
    return int(stub.CollectGarbage(pb.CollectGarbageRequest(), timeout=30).deleted_count)


def test_refcount_and_gc_lifecycle(
    strict: SnapshotProcess, strict_stub: pb_grpc.SnapshotStoreServiceStub
) -> None:
    loose = put(strict_stub, os.urandom(1000)).blob.digest
    held_data = os.urandom(2000)
    held = put(strict_stub, held_data, ref_name="functions/a", tenant="gc-a").blob.digest
    assert add_ref(strict_stub, "gc-b", held, "snapshots/b") is True

    assert collect(strict_stub) >= 1  # strict has no grace: the loose object goes at once
    assert absent(strict_stub, loose)
    assert not strict.blob_path(loose).exists()
    assert b"".join(read(strict_stub, held)) == held_data

    assert remove_ref(strict_stub, "gc-a", held, "functions/a") is True
    assert remove_ref(strict_stub, "gc-a", held, "functions/a") is False
    collect(strict_stub)
    assert b"".join(read(strict_stub, held)) == held_data  # gc-b still holds it
    assert usage(strict_stub, "gc-a") == (0, 0, 0)
    assert usage(strict_stub, "gc-b") == (2000, 1, 1)

    assert remove_ref(strict_stub, "gc-b", held, "snapshots/b") is True
    assert collect(strict_stub) >= 1
    assert absent(strict_stub, held)
    error = failure(lambda: add_ref(strict_stub, "gc-b", held, "too-late"))
    assert code_reason(error) == ("NOT_FOUND", "BLOB_NOT_FOUND")
    assert usage(strict_stub, "gc-b") == (0, 0, 0)


def test_the_grace_period_protects_a_put_before_its_ref(
    plain_stub: pb_grpc.SnapshotStoreServiceStub,
) -> None:
    digest = put(plain_stub, os.urandom(1000)).blob.digest
    assert collect(plain_stub) == 0  # an hour of grace
    assert add_ref(plain_stub, "grace", digest, "late") is True
    assert plain_stub.StatBlob(pb.StatBlobRequest(digest=digest), timeout=10).blob.digest == digest


def test_the_periodic_sweep_collects_unreferenced_objects(launch: Launch) -> None:
    service = launch("sweep", gc_interval_seconds="0.1", gc_grace_seconds="0")
    with service.channel() as channel:
        stub = pb_grpc.SnapshotStoreServiceStub(channel)
        held = put(stub, os.urandom(100), ref_name="keep", tenant="sweep").blob.digest
        loose = put(stub, os.urandom(100)).blob.digest
        deadline = time.monotonic() + 30
        while service.blob_path(loose).exists():
            assert time.monotonic() < deadline, "the sweep never ran"
            time.sleep(0.05)
        assert absent(stub, loose)
        assert stub.StatBlob(pb.StatBlobRequest(digest=held), timeout=10).blob.digest == held
