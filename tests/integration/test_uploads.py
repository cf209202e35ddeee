"""UploadFunction over real gRPC: a module streamed in chunks, and malformed streams refused
with a typed reason and nothing stored."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import blake3
import grpc
import pytest
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as store_pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as store_grpc
from tensorwasm_client.client import GatewayClient
from tensorwasm_common.status import error_from_rpc

from tests.integration.conftest import RunningStack
from tests.modules import padded

pytestmark = pytest.mark.integration

CHUNK = 64 << 10


def test_a_module_uploaded_in_chunks_is_deployed_and_runs(
    client: GatewayClient, wasm: Callable[[str], bytes]
) -> None:
    module = padded(wasm("add"), 3 << 20)
    seen: list[tuple[int, int]] = []
    function = client.upload_function(
        "add", module, chunk_bytes=CHUNK, progress=lambda done, total: seen.append((done, total))
    )
    assert function.module_digest == blake3.blake3(module).hexdigest()
    assert function.module_size_bytes == len(module)
    assert seen[-1] == (len(module), len(module))
    assert [done for done, _ in seen] == sorted({done for done, _ in seen})
    result = client.invoke("add", "add", [Value(i32=40), Value(i32=2)])
    assert result.outcome.success.results[0].i32 == 42


def _stream(
    header: pb.UploadFunctionHeader, chunks: list[bytes], trailer: str | None
) -> Iterator[pb.UploadFunctionRequest]:
    yield pb.UploadFunctionRequest(header=header)
    for chunk in chunks:
        yield pb.UploadFunctionRequest(chunk=chunk)
    if trailer is not None:
        yield pb.UploadFunctionRequest(trailer=pb.UploadFunctionTrailer(module_digest=trailer))


@pytest.fixture
def raw(stack: RunningStack, tenant: str) -> Iterator[Callable[..., tuple[str, str]]]:
    """Sends one upload stream; returns the refusal's (code, reason)."""
    with grpc.insecure_channel(stack.gateway) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)

        def send(messages: Iterator[pb.UploadFunctionRequest]) -> tuple[str, str]:
            try:
                stub.UploadFunction(messages, metadata=(("x-tensorwasm-tenant", tenant),))
            except grpc.RpcError as exc:
                error = error_from_rpc(exc)
                return error.code.name, error.reason
            return "OK", ""

        yield send


def test_malformed_streams_are_refused_typed_and_store_nothing(
    raw: Callable[..., tuple[str, str]],
    stack: RunningStack,
    client: GatewayClient,
    wasm: Callable[[str], bytes],
) -> None:
    module = padded(wasm("add"), 1 << 20)
    digest = blake3.blake3(module).hexdigest()
    chunks = [module[i : i + CHUNK] for i in range(0, len(module), CHUNK)]
    tampered = bytearray(module)
    tampered[-1] ^= 0xFF
    other_digest = blake3.blake3(bytes(tampered)).hexdigest()
    size = len(module)

    def header(declared_size: int = size, declared_digest: str = "") -> pb.UploadFunctionHeader:
        return pb.UploadFunctionHeader(
            function_id="add", module_size_bytes=declared_size, module_digest=declared_digest
        )

    cases = {
        "wrong digest (header)": _stream(header(declared_digest=other_digest), chunks, None),
        "wrong digest (trailer)": _stream(header(), chunks, other_digest),
        "truncated": _stream(header(), chunks[:-1], digest),
        "more than declared": _stream(header(size - 1), chunks, digest),
        "declared over the cap": _stream(header(1 << 40), chunks, digest),
        "no digest": _stream(header(), chunks, None),
        "no header": iter([pb.UploadFunctionRequest(chunk=module)]),
    }
    expected = {
        "wrong digest (header)": "UPLOAD_DIGEST_MISMATCH",
        "wrong digest (trailer)": "UPLOAD_DIGEST_MISMATCH",
        "truncated": "UPLOAD_INCOMPLETE",
        "more than declared": "TOO_LARGE",
        "declared over the cap": "TOO_LARGE",
        "no digest": "UPLOAD_MALFORMED",
        "no header": "UPLOAD_MALFORMED",
    }
    outcomes = {name: raw(messages) for name, messages in cases.items()}
    assert outcomes == {name: ("INVALID_ARGUMENT", reason) for name, reason in expected.items()}

    # Nothing stored: no function, and neither the module nor the tampered bytes in the store.
    assert [f.name for f in client.list_functions()] == []
    with stack.internal_channel("snapshot") as channel:
        store = store_grpc.SnapshotStoreServiceStub(channel)
        for blob in (digest, other_digest):
            with pytest.raises(grpc.RpcError) as caught:
                store.StatBlob(store_pb.StatBlobRequest(digest=blob), timeout=10)
            assert error_from_rpc(caught.value).reason == "BLOB_NOT_FOUND"

    # The same stream, well formed, is accepted.
    assert raw(_stream(header(), chunks, digest)) == ("OK", "")
