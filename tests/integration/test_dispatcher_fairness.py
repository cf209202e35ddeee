"""Fair scheduling in a real dispatcher process: a tenant with a deep backlog of batches
does not starve a light tenant, whose requests are served before the backlog drains.

Fairness is asserted with counts read from GetTenantUsage (the flood's batches completed
while each light request ran, and the flood's queue left when the light tenant is done),
never with wall-clock thresholds.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2 as pb
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2_grpc as pb_grpc
from tensorwasm_kernels import CATALOG

from tests.integration.dispatcher_process import running_dispatcher

pytestmark = pytest.mark.integration

FLOOD_REQUESTS = 24
# One load + 255 launches = 256 commands: one quantum (the default) per flood batch.
FLOOD_LAUNCHES = 255
LIGHT_REQUESTS = 3
# Large enough that one flood batch takes far longer than a light request's round trip and
# the usage queries around it, even on a loaded machine.
FLOOD_ELEMENTS = 1 << 18


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A cpu dispatcher with one worker, so batches wait in their tenants' queues."""
    with running_dispatcher(
        tmp_path_factory.mktemp("fair"),
        MAX_IN_FLIGHT="64",
        MAX_IN_FLIGHT_PER_TENANT="48",
        WORKERS="1",
    ) as address:
        yield address


def vector_add_batch(session: str, n: int, launches: int) -> pb.ExecuteRequest:
    """Loads vector_add and runs it `launches` times over f32[n]."""
    values = np.arange(n, dtype=np.float32)
    buffers = [
        pb.StagedBuffer(buffer_id=0, data=values.tobytes(), guest_offset=0),
        pb.StagedBuffer(buffer_id=1, data=values.tobytes(), guest_offset=4 * n),
        pb.StagedBuffer(buffer_id=2, data=bytes(4 * n), guest_offset=8 * n, copy_back=True),
    ]
    args = [pb.KernelArg(buffer=pb.BufferRef(buffer_id=i, length_bytes=4 * n)) for i in range(3)]
    args.append(pb.KernelArg(i32=n))
    ptx = CATALOG["vector_add"].ptx_text().encode()
    launch = pb.LaunchKernel(
        kernel_id=0,
        grid=pb.Dim3(x=(n + 255) // 256, y=1, z=1),
        block=pb.Dim3(x=256, y=1, z=1),
        args=args,
    )
    commands = [pb.Command(load=pb.LoadKernel(kernel_id=0, ptx=ptx, entry="vector_add"))]
    commands += [pb.Command(launch=launch)] * launches
    return pb.ExecuteRequest(
        session_id=session, buffers=buffers, commands=commands, end_session=True
    )


def usage(stub: pb_grpc.DispatcherServiceStub, tenant: str) -> pb.GetTenantUsageResponse:
    return stub.GetTenantUsage(pb.GetTenantUsageRequest(tenant=tenant), timeout=30)


def test_a_light_tenant_is_served_before_the_floods_backlog_drains(address: str) -> None:
    # Each tenant on its own connection (as from different executors): on one shared
    # HTTP/2 connection the light request would queue behind the flood's bytes.
    with (
        grpc.insecure_channel(address) as flood_channel,
        grpc.insecure_channel(address) as light_channel,
    ):
        check_fairness(
            pb_grpc.DispatcherServiceStub(flood_channel),
            pb_grpc.DispatcherServiceStub(light_channel),
        )


def check_fairness(
    flood_stub: pb_grpc.DispatcherServiceStub, stub: pb_grpc.DispatcherServiceStub
) -> None:
    flood = [
        flood_stub.Execute.future(
            vector_add_batch(f"flood-{index}", FLOOD_ELEMENTS, FLOOD_LAUNCHES),
            metadata=(("x-tensorwasm-tenant", "flood"),),
            timeout=300,
        )
        for index in range(FLOOD_REQUESTS)
    ]
    # Wait (bounded) until most of the flood is admitted and queued behind one worker.
    deadline = time.monotonic() + 60
    while usage(stub, "flood").queued_requests < FLOOD_REQUESTS // 2:
        assert time.monotonic() < deadline, ("the flood never queued up", usage(stub, "flood"))
        time.sleep(0.01)
    backlog = usage(stub, "flood").queued_requests

    during: list[int] = []
    for index in range(LIGHT_REQUESTS):
        before = usage(stub, "flood").execute_requests
        reply = stub.Execute(
            vector_add_batch(f"light-{index}", 64, 1),
            metadata=(("x-tensorwasm-tenant", "light"),),
            timeout=300,
        )
        during.append(usage(stub, "flood").execute_requests - before)
        assert [result.abi_code for result in reply.results] == [0, 0]
        out = np.frombuffer(reply.buffers[0].data, dtype=np.float32)
        np.testing.assert_array_equal(out, 2 * np.arange(64, dtype=np.float32))
    left = usage(stub, "flood").queued_requests

    # FIFO would make the first light request wait for the whole backlog (>= 12 flood
    # batches); by turns it waits for the flood batch running and at most one more (and
    # one or two may complete while the request and the usage queries are in transit).
    assert all(count <= 4 for count in during), (during, backlog)
    assert left > 0 and left >= backlog - 3 * LIGHT_REQUESTS, (left, backlog, during)
    for future in flood:
        assert all(result.abi_code == 0 for result in future.result(timeout=300).results)
    final = usage(stub, "flood")
    assert final.queued_requests == 0
    assert final.launches == FLOOD_REQUESTS * FLOOD_LAUNCHES
    assert usage(stub, "light").launches == LIGHT_REQUESTS
