"""The snapshot store never serves damaged bytes, and its errors reach the caller intact.

On-disk layout: <data_dir>/snapshot/blobs/<digest[:2]>/<digest>, a 60-byte header
(magic, size, level, raw digest, frame size) followed by one zstd frame.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import blake3
import grpc
import pytest
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as pb_grpc
from tensorwasm_client.client import TensorWasmError
from tensorwasm_common.status import error_from_rpc

pytestmark = pytest.mark.integration

HEADER_BYTES = 64  # format 2 of the blob file
CHUNK = 1 << 20


def blob_path(data_dir: Path, digest: str) -> Path:
    return data_dir / "snapshot" / "blobs" / digest[:2] / digest


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def store(stack: Any) -> Iterator[pb_grpc.SnapshotStoreServiceStub]:
    with stack.internal_channel(
        "snapshot", **{"grpc.max_receive_message_length": 64 << 20}
    ) as channel:
        yield pb_grpc.SnapshotStoreServiceStub(channel)


def put(
    store: pb_grpc.SnapshotStoreServiceStub, data: bytes, expected_digest: str = "", size: int = 0
) -> pb.PutBlobResponse:
    def messages() -> Iterator[pb.PutBlobRequest]:
        header = pb.PutBlobHeader(expected_digest=expected_digest, size_bytes=size)
        yield pb.PutBlobRequest(header=header)
        for offset in range(0, len(data), CHUNK):
            yield pb.PutBlobRequest(chunk=data[offset : offset + CHUNK])

    response: pb.PutBlobResponse = store.PutBlob(messages(), timeout=30)
    return response


def get_chunks(store: pb_grpc.SnapshotStoreServiceStub, digest: str) -> tuple[list[bytes], Any]:
    """The chunks received before the stream ended, and the error that ended it (or None)."""
    received: list[bytes] = []
    try:
        for message in store.GetBlob(pb.GetBlobRequest(digest=digest), timeout=30):
            received.append(message.chunk)
    except grpc.RpcError as exc:
        return received, error_from_rpc(exc)
    return received, None


def rpc_error(call: Callable[[], object]) -> tuple[str, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = error_from_rpc(caught.value)
    return error.code.name, error.reason


# --- the store on its own (shared stack; every blob is random, so nobody else has it) ---


def test_put_get_stat_round_trip_and_dedup(store: pb_grpc.SnapshotStoreServiceStub) -> None:
    data = os.urandom(CHUNK * 2 + 12345)
    digest = blake3.blake3(data).hexdigest()

    first = put(store, data, expected_digest=digest, size=len(data))
    again = put(store, data)

    assert (first.blob.digest, first.blob.size_bytes, first.deduplicated) == (
        digest,
        len(data),
        False,
    )
    assert (again.blob.digest, again.deduplicated) == (digest, True)
    stat = store.StatBlob(pb.StatBlobRequest(digest=digest), timeout=10).blob
    assert (stat.digest, stat.size_bytes) == (digest, len(data))
    assert stat.stored_size_bytes > HEADER_BYTES
    chunks, error = get_chunks(store, digest)
    assert error is None
    assert b"".join(chunks) == data
    assert len(chunks) == 3


def test_unknown_digest(store: pb_grpc.SnapshotStoreServiceStub) -> None:
    digest = blake3.blake3(os.urandom(32)).hexdigest()
    assert rpc_error(lambda: store.StatBlob(pb.StatBlobRequest(digest=digest), timeout=10)) == (
        "NOT_FOUND",
        "BLOB_NOT_FOUND",
    )
    chunks, error = get_chunks(store, digest)
    assert chunks == []
    assert (error.code.name, error.reason) == ("NOT_FOUND", "BLOB_NOT_FOUND")


@pytest.mark.parametrize(
    "digest",
    ["", "abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "../" + "0" * 61, "0" * 63 + "\n"],
    ids=["empty", "short", "upper", "non-hex", "63", "65", "path", "newline"],
)
def test_malformed_digest(store: pb_grpc.SnapshotStoreServiceStub, digest: str) -> None:
    expected = ("INVALID_ARGUMENT", "INVALID_DIGEST")
    assert (
        rpc_error(lambda: store.StatBlob(pb.StatBlobRequest(digest=digest), timeout=10)) == expected
    )
    chunks, error = get_chunks(store, digest)
    assert chunks == []
    assert (error.code.name, error.reason) == expected


def test_put_with_the_wrong_digest_is_refused_and_not_stored(
    store: pb_grpc.SnapshotStoreServiceStub,
) -> None:
    data = os.urandom(4096)
    wrong = blake3.blake3(data + b"!").hexdigest()

    assert rpc_error(lambda: put(store, data, expected_digest=wrong)) == (
        "INVALID_ARGUMENT",
        "DIGEST_MISMATCH",
    )
    for digest in (wrong, blake3.blake3(data).hexdigest()):
        assert rpc_error(
            lambda d=digest: store.StatBlob(pb.StatBlobRequest(digest=d), timeout=10)
        ) == (
            "NOT_FOUND",
            "BLOB_NOT_FOUND",
        )


def test_put_with_the_wrong_size_is_refused(store: pb_grpc.SnapshotStoreServiceStub) -> None:
    data = os.urandom(4096)
    assert rpc_error(lambda: put(store, data, size=len(data) + 1)) == (
        "INVALID_ARGUMENT",
        "DIGEST_MISMATCH",
    )


def test_put_with_a_malformed_expected_digest(store: pb_grpc.SnapshotStoreServiceStub) -> None:
    assert rpc_error(lambda: put(store, b"data", expected_digest="xyz")) == (
        "INVALID_ARGUMENT",
        "INVALID_DIGEST",
    )


@pytest.mark.parametrize(
    "damage",
    ["frame-start", "frame-middle", "frame-end", "header-magic", "header-digest", "truncated"],
)
def test_damaged_blob_is_never_served(
    stack: Any, store: pb_grpc.SnapshotStoreServiceStub, damage: str
) -> None:
    # Larger than one chunk: nothing may be streamed before the whole blob is verified.
    data = os.urandom(CHUNK * 2 + 777)
    digest = put(store, data).blob.digest
    path = blob_path(stack.data_dir, digest)
    size = path.stat().st_size
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: size // 2])
    else:
        offset = {
            "frame-start": HEADER_BYTES + 10,
            "frame-middle": (HEADER_BYTES + size) // 2,
            "frame-end": size - 10,
            "header-magic": 0,
            "header-digest": 30,
        }[damage]
        flip_byte(path, offset)

    chunks, error = get_chunks(store, digest)

    assert chunks == []
    assert error is not None
    assert (error.code.name, error.reason) == ("DATA_LOSS", "BLOB_INTEGRITY")
    assert error.metadata["digest"] == digest


def test_uploading_the_same_bytes_again_replaces_a_damaged_blob(
    stack: Any, store: pb_grpc.SnapshotStoreServiceStub
) -> None:
    data = os.urandom(10_000)
    digest = put(store, data).blob.digest
    path = blob_path(stack.data_dir, digest)
    flip_byte(path, (HEADER_BYTES + path.stat().st_size) // 2)
    assert get_chunks(store, digest)[1].reason == "BLOB_INTEGRITY"

    again = put(store, data)

    assert (again.blob.digest, again.deduplicated) == (digest, False)
    chunks, error = get_chunks(store, digest)
    assert error is None
    assert b"".join(chunks) == data


# --- a damaged module, seen through the gateway by a fresh executor (private stack) ---


def test_damaged_module_fails_the_call_with_data_loss(
    launch_stack: Callable[[Path], Any], tmp_path: Path, wasm: Callable[[str], bytes]
) -> None:
    first = launch_stack(tmp_path)
    with first.client() as client:
        function = client.create_function("add", wasm("add"))
        healthy = client.create_function("numeric", wasm("numeric"))
    first.stop()
    path = blob_path(tmp_path, function.module_digest)
    flip_byte(path, (HEADER_BYTES + path.stat().st_size) // 2)

    # A fresh replica (no local artifacts) must fetch the module again.
    shutil.rmtree(tmp_path / "executor" / "artifacts")
    second = launch_stack(tmp_path)
    # Deploy shared the compiled artifact through the store, which would serve the replica
    # without the wasm: remove it, so that the replica must fetch the (damaged) module.
    with second.internal_channel("snapshot") as channel:
        store = pb_grpc.SnapshotStoreServiceStub(channel)
        artifacts = (("x-tensorwasm-tenant", "fleet-artifacts"),)
        listed = store.ListSnapshots(
            pb.ListSnapshotsRequest(source_digest=function.module_digest),
            timeout=10,
            metadata=artifacts,
        )
        assert len(listed.snapshots) == 1
        store.DeleteSnapshot(
            pb.DeleteSnapshotRequest(id=listed.snapshots[0].id), timeout=10, metadata=artifacts
        )
    with second.client() as client:
        with pytest.raises(TensorWasmError) as caught:
            client.invoke("add", "add", [Value(i32=1), Value(i32=2)])
        assert (caught.value.code, caught.value.reason) == ("DATA_LOSS", "BLOB_INTEGRITY")
        assert caught.value.metadata["digest"] == function.module_digest
        # Undamaged functions still work; the damaged one keeps failing the same way.
        assert list(client.invoke("numeric", "id_i32", [Value(i32=8)]).outcome.success.results) == [
            Value(i32=8)
        ]
        assert healthy.module_digest != function.module_digest
        with pytest.raises(TensorWasmError) as caught:
            client.invoke("add", "add", [Value(i32=1), Value(i32=2)])
        assert caught.value.reason == "BLOB_INTEGRITY"

    with second.internal_channel("snapshot") as channel:
        store = pb_grpc.SnapshotStoreServiceStub(channel)
        chunks, error = get_chunks(store, function.module_digest)
    assert chunks == []
    assert (error.code.name, error.reason) == ("DATA_LOSS", "BLOB_INTEGRITY")

    # Deploying the same bytes again stores a good copy, which heals the first function too.
    with second.client() as client:
        again = client.create_function("add-again", wasm("add"))
        assert again.module_digest == function.module_digest
        for name in ("add", "add-again"):
            response = client.invoke(name, "add", [Value(i32=1), Value(i32=2)])
            assert list(response.outcome.success.results) == [Value(i32=3)]


def test_a_restarted_executor_runs_from_its_local_artifact(
    launch_stack: Callable[[Path], Any], tmp_path: Path, wasm: Callable[[str], bytes]
) -> None:
    """The executor's artifact file (Module.deserialize_file) serves a restart: the module
    is neither fetched nor compiled again, so even a damaged store copy goes unread."""
    first = launch_stack(tmp_path)
    with first.client() as client:
        function = client.create_function("add", wasm("add"))
    first.stop()
    artifacts = list((tmp_path / "executor" / "artifacts").rglob(f"{function.module_digest}.cwasm"))
    assert len(artifacts) == 1
    path = blob_path(tmp_path, function.module_digest)
    flip_byte(path, (HEADER_BYTES + path.stat().st_size) // 2)
    second = launch_stack(tmp_path)
    with second.client() as client:
        response = client.invoke("add", "add", [Value(i32=1), Value(i32=2)])
    assert list(response.outcome.success.results) == [Value(i32=3)]
