"""A failed deploy leaves nothing behind in the snapshot store: the module reference it
took is released, so failures never eat into the tenant's quota."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import wasmtime
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as pb_grpc
from tensorwasm_client.client import TensorWasmError

from .conftest import RunningStack, start_stack

pytestmark = pytest.mark.integration
QUOTA_BYTES = 2000
# Each passes the gateway's checks (the wasm magic number), then fails to compile or link,
# and each is distinct (its own digest, so its own charge).
INVALID = [b"\x00asm\x01\x00\x00\x00" + bytes([0xFF, i]) + b"\x00" * 300 for i in range(4)]
UNSATISFIED = [
    bytes(
        wasmtime.wat2wasm(
            f'(module (import "nowhere" "missing{i}" (func)) (func (export "f") call 0)'
            f' (memory 1) (data (i32.const 0) "{"x" * 300}"))'
        )
    )
    for i in range(4)
]


@pytest.fixture(scope="module")
def small_quota(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    running = start_stack(
        tmp_path_factory.mktemp("failed-deploys"),
        {"TENSORWASM_SNAPSHOT_TENANT_QUOTA_BYTES": str(QUOTA_BYTES)},
    )
    try:
        yield running
    finally:
        running.stop()


def _usage(stack: RunningStack, tenant: str) -> pb.GetUsageResponse:
    with stack.internal_channel("snapshot") as channel:
        response: pb.GetUsageResponse = pb_grpc.SnapshotStoreServiceStub(channel).GetUsage(
            pb.GetUsageRequest(), metadata=(("x-tensorwasm-tenant", tenant),)
        )
    return response


def test_failed_deploys_release_their_module_and_leave_the_quota_whole(
    small_quota: RunningStack, wasm: Callable[[str], bytes]
) -> None:
    # Together the failed modules are well over the quota: were any kept, the store
    # would refuse the later ones, and the valid deploy, as TENANT_QUOTA_EXCEEDED.
    assert sum(map(len, INVALID + UNSATISFIED)) > QUOTA_BYTES
    reasons = []
    with small_quota.client("failing") as client:
        for number, module in enumerate(INVALID + UNSATISFIED):
            with pytest.raises(TensorWasmError) as caught:
                client.create_function(f"bad-{number}", module)
            reasons.append(caught.value.reason)
        assert reasons == ["INVALID_WASM"] * len(INVALID) + ["UNSATISFIED_IMPORT"] * len(
            UNSATISFIED
        )
        usage = _usage(small_quota, "failing")
        assert (usage.ref_count, usage.object_count, usage.size_bytes) == (0, 0, 0)
        assert list(client.list_functions()) == []

        deployed = client.create_function("good", wasm("add"))
        assert deployed.name == "functions/good"
    usage = _usage(small_quota, "failing")
    assert (usage.ref_count, usage.object_count) == (1, 1)
    assert usage.size_bytes == deployed.module_size_bytes
