"""Cubin sharing's lookup / compile / put logic (cubin_sharing.py) with a fake driver-side
loader against a real jit cache server (a `python -m tensorwasm_jit` process); the real
driver path is in tests/gpu/test_cubin_sharing_gpu.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from tensorwasm.jit.v1 import jit_service_pb2 as jit_pb
from tensorwasm.jit.v1 import jit_service_pb2_grpc as jit_grpc
from tensorwasm_common.digests import blake3_hex
from tensorwasm_common.settings import SettingsError
from tensorwasm_dispatcher.backends.cubin_sharing import (
    CubinSharing,
    JitArtifactStore,
    LocalCubins,
    ptx_digest,
)
from tensorwasm_dispatcher.backends.discovery import CudaCallError
from tensorwasm_dispatcher.settings import DispatcherSettings

PTX = b".version 8.0\n.target sm_80\n.address_size 64\n.visible .entry k()\n{\nret;\n}\n"


@pytest.fixture(scope="module")
def jit_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real jit cache server on an ephemeral port."""
    root = tmp_path_factory.mktemp("jit")
    ready = root / "ready.json"
    env = {
        **os.environ,
        "TENSORWASM_JIT_LISTEN_ADDRESS": "127.0.0.1:0",
        "TENSORWASM_JIT_METRICS_ADDRESS": "127.0.0.1:0",
        "TENSORWASM_JIT_READY_FILE": str(ready),
        "TENSORWASM_JIT_DATA_DIR": str(root / "data"),
    }
    with (root / "jit.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tensorwasm_jit"], env=env, stdout=log, stderr=log
        )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert process.poll() is None, (root / "jit.log").read_text()
            assert time.monotonic() < deadline, "the jit cache did not start"
            time.sleep(0.05)
        yield str(json.loads(ready.read_text())["grpc_address"])
    finally:
        process.terminate()
        process.wait(timeout=10)


class FakeLoader:
    """The driver side: `compile_ptx` makes a fake cubin of the PTX; `load_image`
    records what it was given and refuses images listed in `refuse`."""

    def __init__(self, refuse: tuple[bytes, ...] = (), refuse_ptx: bool = False) -> None:
        self.loaded: list[bytes] = []
        self.compiled: list[bytes] = []
        self.refuse = refuse
        self.refuse_ptx = refuse_ptx

    def load_image(self, image: bytes) -> Any:
        if image in self.refuse:
            raise CudaCallError(200)  # CUDA_ERROR_INVALID_IMAGE
        self.loaded.append(image)
        return ("module", image)

    def compile_ptx(self, ptx: bytes) -> bytes:
        if self.refuse_ptx:
            raise CudaCallError(218)  # CUDA_ERROR_INVALID_PTX
        self.compiled.append(ptx)
        return b"\x7fELF-cubin-of-" + blake3_hex(ptx).encode()


def unique_ptx(tag: str) -> bytes:
    return PTX.replace(b"ret;", f"// {tag} {time.monotonic_ns()}\nret;".encode())


def stored(address: str, ptx: bytes, capability: str) -> bytes | None:
    with grpc.insecure_channel(address) as channel:
        try:
            response = jit_grpc.JitCacheServiceStub(channel).GetArtifact(
                jit_pb.GetArtifactRequest(
                    ptx_digest=ptx_digest(ptx), compute_capability=capability
                ),
                timeout=5,
            )
        except grpc.RpcError as exc:
            assert exc.code() is grpc.StatusCode.NOT_FOUND
            return None
    return bytes(response.data)


def test_a_miss_compiles_loads_the_cubin_and_shares_it(jit_address: str) -> None:
    sharing = CubinSharing(JitArtifactStore(jit_address), "sm_90")
    loader = FakeLoader()
    ptx = unique_ptx("miss")
    module = sharing.load(ptx, loader)
    cubin = b"\x7fELF-cubin-of-" + blake3_hex(ptx).encode()
    assert module == ("module", cubin)  # the cubin was loaded, not the PTX
    assert loader.compiled == [ptx]
    assert stored(jit_address, ptx, "sm_90") == cubin
    assert stored(jit_address, ptx, "sm_80") is None  # per compute capability
    assert (sharing.stats.hits, sharing.stats.misses, sharing.stats.puts) == (0, 1, 1)


def test_a_second_dispatcher_loads_the_shared_cubin_without_compiling(jit_address: str) -> None:
    ptx = unique_ptx("hit")
    first = FakeLoader()
    CubinSharing(JitArtifactStore(jit_address), "sm_86").load(ptx, first)
    other = CubinSharing(JitArtifactStore(jit_address), "sm_86")
    second = FakeLoader()
    assert other.load(ptx, second) == ("module", first.loaded[0])
    assert second.compiled == []
    assert (other.stats.hits, other.stats.misses, other.stats.puts) == (1, 0, 0)
    # A NUL-terminated copy of the same text is the same PTX (the jit cache's digest).
    assert ptx_digest(ptx + b"\0") == ptx_digest(ptx)
    assert other.load(ptx + b"\0", FakeLoader()) == ("module", first.loaded[0])


def test_the_digest_is_the_jit_caches_ptx_digest(jit_address: str) -> None:
    """A jit-emitted kernel's cubin is found under the digest its record carries."""
    with grpc.insecure_channel(jit_address) as channel:
        kernel = (
            jit_grpc.JitCacheServiceStub(channel)
            .EmitKernel(jit_pb.EmitKernelRequest(op="relu", target="sm_80"), timeout=10)
            .kernel
        )
    assert ptx_digest(kernel.ptx.encode()) == kernel.ptx_digest


def test_a_refused_shared_cubin_falls_back_to_compiling(jit_address: str) -> None:
    ptx = unique_ptx("refused")
    CubinSharing(JitArtifactStore(jit_address), "sm_75").load(ptx, FakeLoader())
    shared = stored(jit_address, ptx, "sm_75")
    assert shared is not None
    sharing = CubinSharing(JitArtifactStore(jit_address), "sm_75")
    loader = FakeLoader(refuse=(shared,))
    # The fake compiles to the same bytes, which it refuses too: make them differ.
    loader.compile_ptx = lambda text: b"\x7fELF-recompiled"  # type: ignore[method-assign]
    assert sharing.load(ptx, loader) == ("module", b"\x7fELF-recompiled")
    assert (sharing.stats.refused, sharing.stats.misses) == (1, 1)


def test_a_ptx_the_driver_refuses_raises_and_shares_nothing(jit_address: str) -> None:
    sharing = CubinSharing(JitArtifactStore(jit_address), "sm_90")
    ptx = unique_ptx("bad")
    with pytest.raises(CudaCallError):
        sharing.load(ptx, FakeLoader(refuse_ptx=True))
    assert stored(jit_address, ptx, "sm_90") is None
    assert sharing.stats.puts == sharing.stats.put_failures == 0


def test_an_unreachable_jit_cache_costs_the_share_never_the_load() -> None:
    store = JitArtifactStore("127.0.0.1:1", timeout_seconds=0.5)
    sharing = CubinSharing(store, "sm_90")
    loader = FakeLoader()
    ptx = unique_ptx("down")
    assert sharing.load(ptx, loader)[0] == "module"
    assert loader.compiled == [ptx]
    assert (sharing.stats.misses, sharing.stats.puts, sharing.stats.put_failures) == (1, 0, 1)
    store.close()


def test_a_cubin_the_jit_cache_refuses_is_a_put_failure(jit_address: str) -> None:
    """An empty cubin is refused by PutArtifact (INVALID_ARGUMENT): counted, load done."""
    sharing = CubinSharing(JitArtifactStore(jit_address), "sm_90")
    loader = FakeLoader()
    loader.compile_ptx = lambda text: b""  # type: ignore[method-assign]
    assert sharing.load(unique_ptx("empty"), loader) == ("module", b"")
    assert (sharing.stats.puts, sharing.stats.put_failures) == (0, 1)


def test_the_setting_is_checked() -> None:
    assert DispatcherSettings().jit_address == ""  # off by default
    assert DispatcherSettings(jit_address="127.0.0.1:50055").jit_address
    with pytest.raises(SettingsError, match="jit_address"):
        DispatcherSettings(jit_address="nowhere")
    with pytest.raises(SettingsError, match="jit_timeout_seconds"):
        DispatcherSettings(jit_timeout_seconds=0)
    assert DispatcherSettings().cubin_cache_bytes == 64 << 20
    with pytest.raises(SettingsError, match="cubin_cache_bytes"):
        DispatcherSettings(cubin_cache_bytes=-1)


class CountingStore(JitArtifactStore):
    """The real gRPC store, counting its round trips."""

    def __init__(self, address: str) -> None:
        super().__init__(address)
        self.gets = 0
        self.puts: list[bool] = []  # the replace flag of each put

    def get(self, ptx_digest: str, capability: str) -> bytes | None:
        self.gets += 1
        return super().get(ptx_digest, capability)

    def put(self, ptx_digest: str, capability: str, data: bytes, *, replace: bool = False) -> bool:
        self.puts.append(replace)
        return super().put(ptx_digest, capability, data, replace=replace)


def loads(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "tensorwasm_dispatcher_cubin_loads_total", {"outcome": outcome}
    )
    return value or 0.0


def test_repeated_loads_come_from_the_local_lru_without_a_round_trip(jit_address: str) -> None:
    store = CountingStore(jit_address)
    sharing = CubinSharing(store, "sm_89")
    loader = FakeLoader()
    ptx = unique_ptx("local")
    before = loads("local_hits")
    first = sharing.load(ptx, loader)
    assert (store.gets, store.puts) == (1, [False])
    for _ in range(3):
        assert sharing.load(ptx, loader) == first
    assert (store.gets, store.puts, loader.compiled) == (1, [False], [ptx])
    assert (sharing.stats.local_hits, sharing.stats.misses) == (3, 1)
    assert loads("local_hits") == before + 3
    # A shared hit enters the LRU too: another dispatcher asks once.
    other_store = CountingStore(jit_address)
    other = CubinSharing(other_store, "sm_89")
    for _ in range(2):
        assert other.load(ptx, FakeLoader()) == first
    assert (other_store.gets, other.stats.hits, other.stats.local_hits) == (1, 1, 1)
    store.close()
    other_store.close()


def test_the_local_lru_is_bounded_in_bytes(jit_address: str) -> None:
    cubin_bytes = len(FakeLoader().compile_ptx(PTX))  # every fake cubin has this size
    store = CountingStore(jit_address)
    sharing = CubinSharing(store, "sm_89", local_bytes=2 * cubin_bytes)
    one, two, three = (unique_ptx(tag) for tag in ("lru1", "lru2", "lru3"))
    for ptx in (one, two, one, three):  # `two` is the least recently used when `three` comes
        sharing.load(ptx, FakeLoader())
    assert (len(sharing.local), sharing.local.total_bytes) == (2, 2 * cubin_bytes)
    gets = store.gets
    sharing.load(one, FakeLoader())
    sharing.load(three, FakeLoader())
    assert store.gets == gets  # both local
    sharing.load(two, FakeLoader())
    assert store.gets == gets + 1  # evicted: asked (and found) in the jit cache
    assert sharing.stats.hits == 1
    none_kept = CubinSharing(store, "sm_89", local_bytes=0)
    none_kept.load(one, FakeLoader())
    none_kept.load(one, FakeLoader())
    assert (len(none_kept.local), none_kept.stats.hits, none_kept.stats.local_hits) == (0, 2, 0)
    store.close()


def test_the_lru_replaces_and_discards() -> None:
    local = LocalCubins(10)
    local.put(("d", "sm_90"), b"12345")
    local.put(("d", "sm_90"), b"123")  # same key: replaced, not counted twice
    assert (len(local), local.total_bytes, local.get(("d", "sm_90"))) == (1, 3, b"123")
    local.put(("e", "sm_90"), b"x" * 11)  # larger than the bound: not kept
    assert local.get(("e", "sm_90")) is None
    local.discard(("d", "sm_90"))
    assert (len(local), local.total_bytes) == (0, 0)


def test_a_refused_shared_cubin_is_overwritten_so_others_stop_recompiling(
    jit_address: str,
) -> None:
    ptx = unique_ptx("overwrite")
    bad = b"\x7fELF-from-an-incompatible-driver"
    seeded = JitArtifactStore(jit_address)
    assert seeded.put(ptx_digest(ptx), "sm_80", bad)
    # This driver refuses `bad`; it compiles its own cubin and puts it with replace.
    store = CountingStore(jit_address)
    sharing = CubinSharing(store, "sm_80")
    good = FakeLoader(refuse=(bad,))
    before = loads("replaced")
    module = sharing.load(ptx, good)
    assert good.compiled == [ptx]
    cubin = good.loaded[0]
    assert module == ("module", cubin) and cubin != bad
    assert store.puts == [True]
    assert stored(jit_address, ptx, "sm_80") == cubin
    assert (sharing.stats.refused, sharing.stats.misses, sharing.stats.puts) == (1, 1, 1)
    assert sharing.stats.replaced == 1 and loads("replaced") == before + 1
    # Every other dispatcher (same driver) now loads the good cubin without compiling.
    for _ in range(2):
        other = CubinSharing(JitArtifactStore(jit_address), "sm_80")
        loader = FakeLoader(refuse=(bad,))
        assert other.load(ptx, loader) == ("module", cubin)
        assert (loader.compiled, other.stats.hits, other.stats.refused) == ([], 1, 0)
    seeded.close()
    store.close()


def test_put_artifact_keeps_the_first_unless_replace(jit_address: str) -> None:
    """The jit service's semantics: first put wins; `replace` overwrites."""
    digest = ptx_digest(unique_ptx("semantics"))
    request = jit_pb.PutArtifactRequest
    with grpc.insecure_channel(jit_address) as channel:
        stub = jit_grpc.JitCacheServiceStub(channel)
        first = stub.PutArtifact(request(ptx_digest=digest, compute_capability="sm_90", data=b"A"))
        kept = stub.PutArtifact(request(ptx_digest=digest, compute_capability="sm_90", data=b"B"))
        get = jit_pb.GetArtifactRequest(ptx_digest=digest, compute_capability="sm_90")
        assert (first.created, kept.created) == (True, False)
        assert stub.GetArtifact(get).data == b"A"
        replaced = stub.PutArtifact(
            request(ptx_digest=digest, compute_capability="sm_90", data=b"BB", replace=True)
        )
        assert replaced.created and replaced.data_digest == blake3_hex(b"BB")
        assert stub.GetArtifact(get).data == b"BB"
        # replace on an empty key stores as usual.
        fresh = ptx_digest(unique_ptx("semantics-fresh"))
        assert stub.PutArtifact(
            request(ptx_digest=fresh, compute_capability="sm_90", data=b"C", replace=True)
        ).created
