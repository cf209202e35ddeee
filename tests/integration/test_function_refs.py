"""A deployed function holds a reference to its module in the snapshot store; deleting
the function releases it, and the store's collector then removes the module (and never
a module a function still uses). Tenant quotas of the store apply to deploys."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from tensorwasm.common.v1 import values_pb2
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as pb_grpc
from tensorwasm_client.client import TensorWasmError

from .conftest import RunningStack, start_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def collecting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = start_stack(
        tmp_path_factory.mktemp("refs"),
        {
            "TENSORWASM_SNAPSHOT_GC_GRACE_SECONDS": "0",
            "TENSORWASM_SNAPSHOT_TENANT_QUOTA_BYTES": "1000",
        },
    )
    try:
        yield running
    finally:
        running.stop()


def _store(stack: RunningStack) -> tuple[grpc.Channel, pb_grpc.SnapshotStoreServiceStub]:
    channel = stack.internal_channel("snapshot")
    return channel, pb_grpc.SnapshotStoreServiceStub(channel)


def _usage(stub: pb_grpc.SnapshotStoreServiceStub, tenant: str) -> pb.GetUsageResponse:
    response: pb.GetUsageResponse = stub.GetUsage(
        pb.GetUsageRequest(), metadata=(("x-tensorwasm-tenant", tenant),)
    )
    return response


def test_delete_releases_the_module_and_gc_removes_it(
    collecting: RunningStack, wasm: Callable[[str], bytes]
) -> None:
    channel, stub = _store(collecting)
    with channel, collecting.client("refs") as client:
        kept = client.create_function("kept", wasm("add")).module_digest
        gone = client.create_function("gone", wasm("counter")).module_digest
        assert _usage(stub, "refs").object_count == 2
        client.delete_function("gone")
        assert _usage(stub, "refs").object_count == 1
        collected: pb.CollectGarbageResponse = stub.CollectGarbage(pb.CollectGarbageRequest())
        assert collected.deleted_count >= 1
        with pytest.raises(grpc.RpcError) as caught:
            stub.StatBlob(pb.StatBlobRequest(digest=gone))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert stub.StatBlob(pb.StatBlobRequest(digest=kept)).blob.digest == kept
        # The surviving function still runs from its module.
        args = [values_pb2.Value(i32=2), values_pb2.Value(i32=3)]
        assert client.invoke("kept", "add", args).outcome.success.results[0].i32 == 5


def test_a_deploy_over_the_tenant_quota_is_refused(
    collecting: RunningStack, wasm: Callable[[str], bytes]
) -> None:
    # The quota is 1000 bytes: 728 + 268 fit, another 409 do not.
    with collecting.client("quota") as client:
        client.create_function("probe", wasm("wasi_probe"))
        client.create_function("counter", wasm("counter"))
        with pytest.raises(TensorWasmError) as caught:
            client.create_function("stream", wasm("stream"))
        assert (caught.value.code, caught.value.reason) == (
            "RESOURCE_EXHAUSTED",
            "TENANT_QUOTA_EXCEEDED",
        )
        with pytest.raises(TensorWasmError) as missing:
            client.get_function("stream")  # nothing was recorded
        assert missing.value.reason == "FUNCTION_NOT_FOUND"
        client.delete_function("probe")  # frees its 728 bytes
        client.create_function("stream", wasm("stream"))
