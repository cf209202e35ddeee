"""Device-resident buffers on the cpu backend: alloc/write/launch/read across batches, the
quota charged while they live, freed at free and at the session's end, per-session handles."""

from __future__ import annotations

import numpy as np
from tensorwasm_common.gpu_abi import AbiError, ArgTag, ScalarArg
from tensorwasm_common.gpu_batch import (
    AllocBuffer,
    Batch,
    DeviceBufferRef,
    FreeBuffer,
    LaunchKernel,
    LoadKernel,
    ReadBuffer,
    WriteBuffer,
)
from tensorwasm_dispatcher.accounting import Ledger
from tensorwasm_dispatcher.backends.base import charged_bytes
from tensorwasm_dispatcher.backends.cpu import CpuBackend
from tensorwasm_dispatcher.batch_runner import Dispatcher
from tensorwasm_dispatcher.gpu_sessions import GpuSessionTable
from tensorwasm_kernels import CATALOG

N = 64


def make(quota: int = 1 << 20) -> Dispatcher:
    backend = CpuBackend()
    ledger = Ledger(quota)
    sessions = GpuSessionTable(backend, idle_ttl_seconds=60)
    return Dispatcher(backend, ledger, sessions)


def codes(dispatcher: Dispatcher, batch: Batch, tenant: str = "t") -> list[int]:
    return [r.code for r in dispatcher.execute(tenant, batch).results]


def vector_add(handles: tuple[int, int, int]) -> LaunchKernel:
    args = (*(DeviceBufferRef(h, 0) for h in handles), ScalarArg(ArgTag.I32, N))
    return LaunchKernel(0, (1, 1, 1), (N, 1, 1), 0, args)


def test_resident_buffers_live_across_batches_and_feed_launches() -> None:
    dispatcher = make()
    a = np.arange(N, dtype=np.float32)
    b = np.full(N, 0.5, dtype=np.float32)
    ptx = CATALOG["vector_add"].ptx_text().encode()
    first = Batch(
        "s",
        (),
        (
            LoadKernel(0, ptx, "vector_add"),
            *(AllocBuffer(h, 4 * N) for h in (1, 2, 3)),
            WriteBuffer(1, 0, a.tobytes()),
            WriteBuffer(2, 0, b.tobytes()),
        ),
    )
    assert codes(dispatcher, first) == [0] * 6
    assert dispatcher.ledger.usage("t").device_buffer_bytes == 3 * 4 * N
    second = Batch("s", (), (vector_add((1, 2, 3)), ReadBuffer(3, 0, 4 * N)))
    outcome = dispatcher.execute("t", second)
    assert [r.code for r in outcome.results] == [0, 0]
    np.testing.assert_array_equal(np.frombuffer(outcome.results[1].data, np.float32), a + b)
    assert outcome.tenant_kernel_seconds >= outcome.kernel_seconds > 0
    # A partial read, and a free that gives the bytes back to the quota.
    part = dispatcher.execute("t", Batch("s", (), (ReadBuffer(1, 8, 8),)))
    assert part.results[0].data == a[2:4].tobytes()
    assert codes(dispatcher, Batch("s", (), (FreeBuffer(2),))) == [0]
    usage = dispatcher.ledger.usage("t")
    assert (usage.device_buffers, usage.device_buffer_bytes) == (2, 2 * 4 * N)
    assert usage.staged_bytes_current == 2 * charged_bytes(4 * N)


def test_the_session_end_frees_its_buffers_and_the_quota() -> None:
    dispatcher = make()
    batch = Batch("s", (), (AllocBuffer(1, 1000), AllocBuffer(2, 24)), True)
    assert codes(dispatcher, batch) == [0, 0]
    usage = dispatcher.ledger.usage("t")
    assert (usage.device_buffers, usage.staged_bytes_current) == (0, 0)
    assert usage.staged_bytes_peak == charged_bytes(1000) + charged_bytes(24) == 1024 + 512


def test_buffers_over_the_quota_are_quota_exceeded() -> None:
    dispatcher = make(quota=4096)
    batch = Batch(
        "s",
        (),
        (AllocBuffer(1, 3000), AllocBuffer(2, 2000), AllocBuffer(3, 1024)),  # 3072 + 1024
    )
    outcome = dispatcher.execute("t", batch)
    assert [r.code for r in outcome.results] == [0, int(AbiError.QUOTA_EXCEEDED), 0]
    assert "quota of 4096 bytes" in outcome.results[1].message
    # The quota is the tenant's: another session of it is refused too; another tenant is not.
    assert codes(dispatcher, Batch("other", (), (AllocBuffer(1, 1),))) == [-6]
    assert codes(dispatcher, Batch("s", (), (AllocBuffer(1, 4096),)), "u") == [0]


def test_bad_handles_ranges_and_sizes_have_their_codes() -> None:
    dispatcher = make()
    batch = Batch(
        "s",
        (),
        (
            AllocBuffer(1, 16),
            AllocBuffer(1, 16),  # the handle exists
            AllocBuffer(2, 0),  # empty
            WriteBuffer(1, 8, bytes(9)),  # past the end
            ReadBuffer(1, 16, 1),  # past the end
            ReadBuffer(7, 0, 1),  # no such buffer
            FreeBuffer(7),
            LaunchKernel(0, (1, 1, 1), (1, 1, 1), 0, (DeviceBufferRef(1, 0),)),  # no kernel
        ),
    )
    assert codes(dispatcher, batch) == [0, -9, -9, -2, -2, -9, -9, -3]
    # Handles are per session: another session of the same tenant cannot name buffer 1.
    assert codes(dispatcher, Batch("s2", (), (ReadBuffer(1, 0, 1),))) == [-9]
    ptx = CATALOG["vector_add"].ptx_text().encode()
    outside = LaunchKernel(
        0,
        (1, 1, 1),
        (1, 1, 1),
        0,
        (DeviceBufferRef(1, 16), DeviceBufferRef(1, 0), DeviceBufferRef(1, 0)),
    )
    result = codes(dispatcher, Batch("s", (), (LoadKernel(0, ptx, "vector_add"), outside)))
    assert result == [0, -2]
