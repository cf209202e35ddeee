"""GPU worker isolation in a real dispatcher (cpu backend, `worker_isolation=tenant`): each
tenant's batches run in its own worker process, and a crash, a batch past its deadline or
an eviction ends that worker only.

The workers are found as the dispatcher's child processes; "running" is read from a
worker's CPU time in /proc, never from a wall-clock wait.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2 as pb
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2_grpc as pb_grpc

from tests.integration.dispatcher_process import dispatcher_process
from tests.integration.test_dispatcher_fairness import vector_add_batch

pytestmark = pytest.mark.integration

LONG_ELEMENTS = 1 << 20
LONG_LAUNCHES = 4000  # seconds of CPU on any machine


@pytest.fixture
def dispatcher(tmp_path: Path) -> Iterator[tuple[pb_grpc.DispatcherServiceStub, int]]:
    with (
        dispatcher_process(tmp_path, WORKER_ISOLATION="tenant", MAX_WORKERS="2", WORKERS="4") as (
            address,
            process,
        ),
        grpc.insecure_channel(address) as channel,
    ):
        yield pb_grpc.DispatcherServiceStub(channel), process.pid


def workers(dispatcher_pid: int) -> set[int]:
    """The dispatcher's worker processes (children started by multiprocessing's spawn)."""
    children: set[int] = set()
    for task in Path(f"/proc/{dispatcher_pid}/task").iterdir():
        try:
            children |= {int(pid) for pid in (task / "children").read_text().split()}
        except OSError:
            continue
    found = set()
    for pid in children:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            found.add(pid)
    return found


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def run(
    stub: pb_grpc.DispatcherServiceStub,
    tenant: str,
    session: str,
    *,
    elements: int = 64,
    launches: int = 1,
    timeout: float = 300,
) -> pb.ExecuteResponse:
    reply: pb.ExecuteResponse = stub.Execute(
        vector_add_batch(session, elements, launches),
        metadata=(("x-tensorwasm-tenant", tenant),),
        timeout=timeout,
    )
    return reply


def new_worker(dispatcher_pid: int, before: set[int]) -> int:
    """The one worker that is not in `before` (waits for it to show up)."""
    deadline = time.monotonic() + 60
    while True:
        added = workers(dispatcher_pid) - before
        if len(added) == 1:
            return added.pop()
        assert time.monotonic() < deadline, ("no new worker", added)
        time.sleep(0.01)


def assert_ok(reply: pb.ExecuteResponse, elements: int = 64) -> None:
    assert [result.abi_code for result in reply.results] == [0, 0], reply.results
    out = np.frombuffer(reply.buffers[0].data, dtype=np.float32)
    np.testing.assert_array_equal(out, 2 * np.arange(elements, dtype=np.float32))


def usage(stub: pb_grpc.DispatcherServiceStub, tenant: str) -> pb.GetTenantUsageResponse:
    return stub.GetTenantUsage(pb.GetTenantUsageRequest(tenant=tenant), timeout=30)


def test_a_worker_killed_mid_batch_fails_only_its_tenants_batch(
    dispatcher: tuple[pb_grpc.DispatcherServiceStub, int],
) -> None:
    stub, pid = dispatcher
    assert_ok(run(stub, "alice", "a-warm"))
    alice = new_worker(pid, set())
    assert_ok(run(stub, "bob", "b-warm"))
    bob = new_worker(pid, {alice})

    replies: list[pb.ExecuteResponse] = []
    long_call = threading.Thread(
        target=lambda: replies.append(
            run(stub, "alice", "a-long", elements=LONG_ELEMENTS, launches=LONG_LAUNCHES)
        )
    )
    started = cpu_ticks(alice)
    long_call.start()
    # Kill alice's worker once it is busy with the long batch (its CPU time grows).
    deadline = time.monotonic() + 120
    while cpu_ticks(alice) < started + 20:
        assert time.monotonic() < deadline, "the long batch never ran"
        time.sleep(0.01)
    os.kill(alice, signal.SIGKILL)
    long_call.join(timeout=120)
    assert replies, "the killed batch never answered"
    codes = {result.abi_code for result in replies[0].results}
    assert codes == {-5}, replies[0].results[:2]
    assert "SIGKILL" in replies[0].results[0].message

    # Bob's worker never noticed; alice's next batch gets a fresh worker.
    assert_ok(run(stub, "bob", "b-after"))
    assert bob in workers(pid)
    assert_ok(run(stub, "alice", "a-after"))
    assert alice not in workers(pid)
    after = usage(stub, "alice")
    assert (after.staged_bytes_current, after.open_sessions) == (0, 0)
    assert after.failed_commands >= LONG_LAUNCHES + 1


def test_a_batch_past_its_deadline_stops_its_worker_only(
    dispatcher: tuple[pb_grpc.DispatcherServiceStub, int],
) -> None:
    stub, pid = dispatcher
    assert_ok(run(stub, "alice", "a-warm"))
    alice = new_worker(pid, set())
    assert_ok(run(stub, "bob", "b-warm"))
    bob = new_worker(pid, {alice})
    with pytest.raises(grpc.RpcError) as raised:
        run(stub, "alice", "a-long", elements=LONG_ELEMENTS, launches=LONG_LAUNCHES, timeout=1.0)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The watchdog stops the worker still running the batch (it would run on for seconds).
    deadline = time.monotonic() + 120
    while alice in workers(pid):
        assert time.monotonic() < deadline, "the worker outlived its batch's deadline"
        time.sleep(0.01)
    assert bob in workers(pid)
    assert_ok(run(stub, "bob", "b-after"))


def test_at_the_cap_the_least_recently_used_idle_worker_is_stopped(
    dispatcher: tuple[pb_grpc.DispatcherServiceStub, int],
) -> None:
    stub, pid = dispatcher
    device = stub.GetDevice(pb.GetDeviceRequest(), timeout=30)
    assert (device.worker_isolation, device.mps_active, list(device.mig_instances)) == (
        "tenant",
        False,
        [],
    )
    assert_ok(run(stub, "alice", "a"))
    alice = new_worker(pid, set())
    assert_ok(run(stub, "bob", "b"))
    bob = new_worker(pid, {alice})
    assert_ok(run(stub, "alice", "a-again"))  # bob is now the least recently used
    assert_ok(run(stub, "carol", "c"))  # a third tenant, at MAX_WORKERS=2
    deadline = time.monotonic() + 60
    while bob in workers(pid):
        assert time.monotonic() < deadline, "the least recently used worker was not stopped"
        time.sleep(0.01)
    assert alice in workers(pid)
    assert len(workers(pid)) == 2
    # Bob's counters survive his worker.
    assert usage(stub, "bob").launches == 1
