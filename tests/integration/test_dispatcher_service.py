"""The dispatcher's gRPC face on its own process: back-pressure with RetryInfo, tenant
isolation under it, malformed batches, and the tenant taken from the metadata."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2 as pb
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2_grpc as pb_grpc
from tensorwasm_common.status import error_from_rpc
from tensorwasm_kernels import CATALOG

from tests.integration.dispatcher_process import running_dispatcher

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pb_grpc.DispatcherServiceStub]:
    """A cpu dispatcher that admits one request per tenant and runs two at once."""
    options = [
        ("grpc.max_send_message_length", 96 << 20),
        ("grpc.max_receive_message_length", 96 << 20),
    ]
    with (
        running_dispatcher(
            tmp_path_factory.mktemp("dispatcher"),
            MAX_IN_FLIGHT="4",
            MAX_IN_FLIGHT_PER_TENANT="1",
            WORKERS="2",
        ) as address,
        grpc.insecure_channel(address, options=options) as channel,
    ):
        yield pb_grpc.DispatcherServiceStub(channel)


def conv2d_batch(session: str, side: int, launches: int) -> pb.ExecuteRequest:
    """Loads conv2d and runs it `launches` times over a side x side image (slow on cpu)."""
    image = np.random.default_rng(1).standard_normal(side * side).astype(np.float32)
    buffers = [
        pb.StagedBuffer(buffer_id=0, data=image.tobytes(), guest_offset=0),
        pb.StagedBuffer(buffer_id=1, data=np.ones(9, np.float32).tobytes(), guest_offset=0),
        pb.StagedBuffer(buffer_id=2, data=bytes(4 * side * side), guest_offset=0, copy_back=True),
    ]
    args = [
        pb.KernelArg(buffer=pb.BufferRef(buffer_id=i, length_bytes=len(buffers[i].data)))
        for i in range(3)
    ] + [pb.KernelArg(i32=side), pb.KernelArg(i32=side)]
    grid, block = pb.Dim3(x=side // 16, y=side // 16, z=1), pb.Dim3(x=16, y=16, z=1)
    spec = CATALOG["conv2d"]
    commands = [
        pb.Command(load=pb.LoadKernel(kernel_id=0, ptx=spec.ptx_text().encode(), entry="conv2d"))
    ]
    commands += [
        pb.Command(launch=pb.LaunchKernel(kernel_id=0, grid=grid, block=block, args=args))
    ] * launches
    return pb.ExecuteRequest(
        session_id=session, buffers=buffers, commands=commands, end_session=True
    )


# Launches left once the slow batch is seen running: each takes far longer than a small
# batch's round trip, on any machine.
SLOW_LAUNCHES = 8


def small_batch(session: str) -> pb.ExecuteRequest:
    return conv2d_batch(session, 16, 1)


def tenant(name: str) -> tuple[tuple[str, str]]:
    return (("x-tensorwasm-tenant", name),)


def test_a_busy_tenant_is_turned_away_and_another_is_served(
    stub: pb_grpc.DispatcherServiceStub,
) -> None:
    slow = stub.Execute.future(
        conv2d_batch("slow", 1024, SLOW_LAUNCHES), metadata=tenant("flood"), timeout=300
    )
    # The slow batch is running once its 4 MiB image is staged (at its first launch): from
    # then on, the tenant's one slot is taken for the remaining launches.
    image_bytes = 4 * 1024 * 1024
    deadline = time.monotonic() + 120
    while not slow.done():
        usage = stub.GetTenantUsage(pb.GetTenantUsageRequest(), metadata=tenant("flood"))
        if usage.staged_bytes_current >= image_bytes:
            break
        assert time.monotonic() < deadline, "the slow batch never started"
        time.sleep(0.01)
    assert not slow.done(), f"the slow batch ended before it was seen running: {slow.exception()}"
    with pytest.raises(grpc.RpcError) as caught:
        stub.Execute(small_batch("again"), metadata=tenant("flood"), timeout=30)
    rejection = error_from_rpc(caught.value)
    # while the flood's request runs, another tenant is served at once
    served = stub.Execute(small_batch("light"), metadata=tenant("light"), timeout=30)
    assert [r.abi_code for r in served.results] == [0, 0]
    assert (rejection.code.name, rejection.reason) == ("RESOURCE_EXHAUSTED", "GPU_TENANT_BUSY")
    assert rejection.retry_after_seconds == pytest.approx(0.05)
    assert rejection.metadata == {"tenant": "flood", "limit": "1"}
    done = slow.result()
    assert [r.abi_code for r in done.results] == [0] * (SLOW_LAUNCHES + 1)
    usage = stub.GetTenantUsage(pb.GetTenantUsageRequest(), metadata=tenant("flood"))
    assert usage.tenant == "flood" and usage.rejected_requests >= 1
    assert usage.launches == SLOW_LAUNCHES and usage.open_sessions == 0


def test_tenant_field_and_metadata_must_agree(stub: pb_grpc.DispatcherServiceStub) -> None:
    request = small_batch("s")
    request.tenant = "a"
    with pytest.raises(grpc.RpcError) as caught:
        stub.Execute(request, metadata=tenant("b"), timeout=30)
    error = error_from_rpc(caught.value)
    assert (error.code.name, error.reason) == ("INVALID_ARGUMENT", "TENANT_MISMATCH")
    assert [r.abi_code for r in stub.Execute(request, metadata=tenant("a")).results] == [0, 0]


@pytest.mark.parametrize(
    "request_",
    [
        pb.ExecuteRequest(commands=[pb.Command()], session_id="s"),
        pb.ExecuteRequest(),
        pb.ExecuteRequest(
            session_id="s",
            commands=[pb.Command(launch=pb.LaunchKernel(kernel_id=0, args=[pb.KernelArg()]))],
        ),
    ],
    ids=["empty-command", "no-session", "empty-argument"],
)
def test_malformed_batches_are_invalid_argument(
    stub: pb_grpc.DispatcherServiceStub, request_: pb.ExecuteRequest
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Execute(request_, metadata=tenant("m"), timeout=30)
    error = error_from_rpc(caught.value)
    assert (error.code.name, error.reason) == ("INVALID_ARGUMENT", "INVALID_GPU_BATCH")
    assert error.domain == "dispatcher.tensorwasm.dev"


def test_per_command_codes_come_back_in_order(stub: pb_grpc.DispatcherServiceStub) -> None:
    request = small_batch("codes")
    request.commands.insert(1, pb.Command(launch=pb.LaunchKernel(kernel_id=5)))
    request.commands.append(pb.Command(load=pb.LoadKernel(kernel_id=1, ptx=b"x", entry="k")))
    response = stub.Execute(request, metadata=tenant("codes"), timeout=30)
    assert [(r.abi_code, bool(r.message)) for r in response.results] == [
        (0, False),
        (-3, True),
        (0, False),
        (-4, True),
    ]
    assert [b.buffer_id for b in response.buffers] == [2]  # the output, asked back
