"""A refused upload keeps its code and reason while the client is still sending.

A grpc.aio client whose write fails because the server already ended the call replaces the
server's status with a bare INTERNAL (grpc/grpc#36066); before the store read what the
client still sent, about a third of these refusals arrived as INTERNAL. Each attempt here
streams a header the store refuses, then 100 chunks without waiting."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable, Iterator

import grpc
import pytest
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as pb_grpc
from tensorwasm_common.status import error_from_rpc

from tests.integration.test_store_service import SnapshotProcess

pytestmark = pytest.mark.integration

ATTEMPTS = 20
CHUNKS = 100


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SnapshotProcess]:
    service = SnapshotProcess(tmp_path_factory.mktemp("refusals"), {"max_blob_bytes": "1024"})
    service.start()
    yield service
    service.stop()


def refusals(
    service: SnapshotProcess, method: str, first: object, chunk: Callable[[], object]
) -> collections.Counter[tuple[str, str]]:
    async def requests() -> AsyncIterator[object]:
        yield first
        for _ in range(CHUNKS):
            yield chunk()

    async def main() -> collections.Counter[tuple[str, str]]:
        seen: collections.Counter[tuple[str, str]] = collections.Counter()
        async with service.aio_channel() as channel:
            stub = pb_grpc.SnapshotStoreServiceStub(channel)
            for _ in range(ATTEMPTS):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await getattr(stub, method)(requests(), timeout=30)
                error = error_from_rpc(caught.value)
                seen[error.code.name, error.reason] += 1
        return seen

    return asyncio.run(main())


def test_a_put_refused_at_its_header_keeps_its_reason(store: SnapshotProcess) -> None:
    header = pb.PutBlobRequest(header=pb.PutBlobHeader(size_bytes=1 << 20))  # over the 1 KiB cap
    seen = refusals(store, "PutBlob", header, lambda: pb.PutBlobRequest(chunk=b"x" * 4096))
    assert seen == {("INVALID_ARGUMENT", "TOO_LARGE"): ATTEMPTS}


def test_a_snapshot_refused_at_its_header_keeps_its_reason(store: SnapshotProcess) -> None:
    header = pb.CreateSnapshotRequest(
        header=pb.CreateSnapshotHeader(
            kind=pb.SNAPSHOT_KIND_COMPILED_MODULE,
            engine_fingerprint="e",
            source_digest="nope",
            payload_size_bytes=1 << 20,
        )
    )
    seen = refusals(
        store, "CreateSnapshot", header, lambda: pb.CreateSnapshotRequest(chunk=b"z" * 4096)
    )
    assert seen == {("INVALID_ARGUMENT", "INVALID_DIGEST"): ATTEMPTS}
