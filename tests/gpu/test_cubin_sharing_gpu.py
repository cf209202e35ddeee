"""GPU tests of cubin sharing in the cuda backend: the driver's linker compiles a PTX to a
cubin, the cubin is shared, and a second backend loads it instead of compiling; a damaged
shared cubin and a PTX the driver refuses keep their meaning.

Run on a machine with an NVIDIA device: `pytest -m gpu tests/gpu`. The store is an
in-memory `ArtifactStore` (the jit cache's side is covered by
tests/unit/dispatcher/test_cubin_sharing.py against a real jit cache server).
"""

from __future__ import annotations

import numpy as np
import pytest
from tensorwasm_common.gpu_abi import AbiError, ArgTag, BufferRef, ScalarArg
from tensorwasm_common.gpu_batch import Batch, LaunchKernel, LoadKernel, StagedRegion
from tensorwasm_dispatcher.accounting import Ledger
from tensorwasm_dispatcher.backends.base import Backend
from tensorwasm_dispatcher.backends.cpu import CpuBackend
from tensorwasm_dispatcher.backends.cubin_sharing import ptx_digest
from tensorwasm_dispatcher.batch_runner import Dispatcher
from tensorwasm_dispatcher.gpu_sessions import GpuSessionTable
from tensorwasm_kernels import CATALOG

pytestmark = pytest.mark.gpu

N = 10_001


class DictStore:
    def __init__(self) -> None:
        self.items: dict[tuple[str, str], bytes] = {}

    def get(self, digest: str, capability: str) -> bytes | None:
        return self.items.get((digest, capability))

    def put(self, digest: str, capability: str, data: bytes, *, replace: bool = False) -> bool:
        key = (digest, capability)
        if key in self.items and not replace:
            return True  # the jit cache's first write wins
        self.items[key] = data
        return True

    def close(self) -> None:
        pass


@pytest.fixture
def open_backend(gpu_run: None):  # type: ignore[no-untyped-def]
    from tensorwasm_dispatcher.backends.cuda import CudaBackend

    opened: list[CudaBackend] = []

    def make(store: DictStore) -> CudaBackend:
        backend = CudaBackend(0, artifacts=store)
        opened.append(backend)
        return backend

    yield make
    for backend in opened:
        backend.close()


def _run(backend: Backend, ptx: bytes, session: str) -> list[int] | bytes:
    a = np.arange(N, dtype=np.float32)
    b = (np.arange(N) % 7).astype(np.float32)
    regions = (
        StagedRegion(0, a.tobytes(), 0, True),
        StagedRegion(1, b.tobytes(), 1 << 20, True),
        StagedRegion(2, bytes(4 * N), 2 << 20, True),
    )
    args = (*(BufferRef(i, 0, 4 * N) for i in range(3)), ScalarArg(ArgTag.U32, N))
    batch = Batch(
        session,
        regions,
        (
            LoadKernel(0, ptx, "vector_add"),
            LaunchKernel(0, ((N + 255) // 256, 1, 1), (256, 1, 1), 0, args),
        ),
        end_session=True,
    )
    dispatcher = Dispatcher(backend, Ledger(1 << 30), GpuSessionTable(backend, idle_ttl_seconds=60))
    outcome = dispatcher.execute("t", batch)
    codes = [result.code for result in outcome.results]
    if codes != [0, 0]:
        return codes
    return outcome.buffers[2]


def test_a_compiled_cubin_is_shared_and_loaded_by_the_next_backend(open_backend) -> None:  # type: ignore[no-untyped-def]
    ptx = CATALOG["vector_add"].ptx_text().encode()
    expected = _run(CpuBackend(), ptx, "cpu")
    store = DictStore()
    first = open_backend(store)
    assert _run(first, ptx, "first") == expected
    key = (ptx_digest(ptx), first.compute_capability())
    assert list(store.items) == [key]
    assert store.items[key][:4] == b"\x7fELF"  # a cubin, not the PTX text
    assert (first.cubins.stats.misses, first.cubins.stats.puts) == (1, 1)
    second = open_backend(store)
    assert _run(second, ptx, "second") == expected
    assert (second.cubins.stats.hits, second.cubins.stats.misses) == (1, 0)


def test_a_damaged_shared_cubin_is_refused_and_compiled_again(open_backend) -> None:  # type: ignore[no-untyped-def]
    ptx = CATALOG["vector_add"].ptx_text().encode()
    store = DictStore()
    backend = open_backend(store)
    key = (ptx_digest(ptx), backend.compute_capability())
    store.items[key] = b"\x7fELF damaged"
    assert _run(backend, ptx, "damaged") == _run(CpuBackend(), ptx, "cpu")
    assert (backend.cubins.stats.refused, backend.cubins.stats.misses) == (1, 1)
    assert backend.cubins.stats.replaced == 1  # the damaged one was overwritten
    assert store.items[key][:4] == b"\x7fELF" and store.items[key] != b"\x7fELF damaged"
    # The same backend loads it again from its LRU; another one from the shared store.
    assert _run(backend, ptx, "again") == _run(CpuBackend(), ptx, "cpu")
    assert backend.cubins.stats.local_hits == 1
    other = open_backend(store)
    assert _run(other, ptx, "other") == _run(CpuBackend(), ptx, "cpu")
    assert (other.cubins.stats.hits, other.cubins.stats.refused) == (1, 0)


def test_a_ptx_the_driver_refuses_is_malformed_and_not_shared(open_backend) -> None:  # type: ignore[no-untyped-def]
    store = DictStore()
    backend = open_backend(store)
    bad = b".version 7.8\n.target sm_80\n.visible .entry vector_add(\n)\n{ bogus; }\n"
    codes = _run(backend, bad, "bad")
    assert isinstance(codes, list) and codes[0] == AbiError.MALFORMED_PTX
    assert store.items == {}
