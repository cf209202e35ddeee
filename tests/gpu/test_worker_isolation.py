"""GPU worker isolation on a device (issue 20): each tenant's worker has its own CUDA
context, so tenant A's kernel cannot read tenant B's device memory (A's access faults in
A's context only), and a sticky error ends A's worker while B's runs on untouched."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from tensorwasm_common.gpu_abi import ArgTag, BufferRef, ScalarArg
from tensorwasm_common.gpu_batch import Batch, LaunchKernel, LoadKernel, StagedRegion
from tensorwasm_dispatcher.accounting import Ledger
from tensorwasm_dispatcher.settings import DispatcherSettings
from tensorwasm_dispatcher.workers import WorkerPool

pytestmark = pytest.mark.gpu

HEADER = ".version 8.0\n.target sm_80\n.address_size 64\n"
# out[0] = the generic address of out itself.
LEAK = (
    HEADER
    + """
.visible .entry leak(.param .u64 out) {
  .reg .b64 %rd<3>;
  ld.param.u64 %rd1, [out];
  cvta.to.global.u64 %rd2, %rd1;
  st.global.u64 [%rd2], %rd1;
  ret;
}
"""
)
# out[0] = *(u64*)address.
PEEK = (
    HEADER
    + """
.visible .entry peek(.param .u64 address, .param .u64 out) {
  .reg .b64 %rd<5>;
  ld.param.u64 %rd1, [address];
  ld.param.u64 %rd2, [out];
  cvta.to.global.u64 %rd3, %rd2;
  ld.u64 %rd4, [%rd1];
  st.global.u64 [%rd3], %rd4;
  ret;
}
"""
)
ONE = (1, 1, 1)


@pytest.fixture
def pool(gpu_run: None) -> Iterator[WorkerPool]:
    settings = DispatcherSettings(backend="cuda", worker_isolation="tenant")
    workers = WorkerPool(settings, Ledger(1 << 30))
    yield workers
    workers.close()


def batch(ptx: str, entry: str, *scalars: ScalarArg) -> Batch:
    return Batch(
        "s",
        (StagedRegion(0, bytes(8), 4096, True),),
        (
            LoadKernel(0, ptx.encode(), entry),
            LaunchKernel(0, ONE, ONE, 0, (*scalars, BufferRef(0, 0, 8))),
        ),
        True,
    )


def test_a_tenant_cannot_read_another_tenants_device_memory(pool: WorkerPool) -> None:
    leaked = pool.execute("bob", batch(LEAK, "leak"))
    assert [r.code for r in leaked.results] == [0, 0], leaked.results
    address = int.from_bytes(leaked.buffers[0], "little")
    assert address
    bob = pool.workers()["bob"]

    # Bob's address means nothing in alice's context: her load faults there, only there.
    peeked = pool.execute("alice", batch(PEEK, "peek", ScalarArg(ArgTag.U64, address)))
    assert peeked.results[1].code == -5, peeked.results
    deadline = time.monotonic() + 60
    while "alice" in pool.workers():  # the sticky error ended her worker
        assert time.monotonic() < deadline, "alice's broken worker kept running"
        time.sleep(0.01)
    assert pool.workers()["bob"] == bob
    again = pool.execute("bob", batch(LEAK, "leak"))
    assert [r.code for r in again.results] == [0, 0]
    # And alice gets a fresh context that works.
    fresh = pool.execute("alice", batch(LEAK, "leak"))
    assert [r.code for r in fresh.results] == [0, 0]
