"""Cubin sharing: a PTX the driver JIT-compiled once is loaded as a cubin everywhere else.

The jit cache stores artifacts per (PTX digest, compute capability) (`PutArtifact`,
`GetArtifact`). With sharing on (`TENSORWASM_DISPATCHER_JIT_ADDRESS` set), the cuda
backend loads a PTX by:

0. the in-process LRU of (PTX digest, compute capability) -> cubin bytes (bounded in
   bytes, `TENSORWASM_DISPATCHER_CUBIN_CACHE_BYTES`): a cubin this dispatcher loaded before
   is loaded again without a round trip (`local_hits`).
1. `GetArtifact(blake3(ptx), sm_XY)`: a hit (its bytes verified against the returned
   digest) is loaded as a cubin; a cubin the driver refuses (damaged, or built by an
   incompatible driver) counts as `refused` and falls through to 2, which then overwrites
   it (`PutArtifact` with `replace`), so one bad artifact does not make every dispatcher
   recompile on every load.
2. otherwise the driver compiles the PTX to a cubin (`cuLinkCreate` / `cuLinkAddData` /
   `cuLinkComplete`), that cubin is loaded, then `PutArtifact` shares it. Best effort: a
   jit cache that is down or refuses costs the round trip, never the load.

Every cubin loaded (shared or compiled here) enters the local LRU. `SharingStats` are also
Prometheus counters, `tensorwasm_dispatcher_cubin_loads_total{outcome}`.

The digest is BLAKE3 of the PTX text without trailing NULs, the `ptx_digest` the jit cache
gives its emitted kernels, so cubins of jit-emitted kernels and of guest-shipped PTX share
one key space. Nothing here imports `cuda`: the backend passes itself as the `ModuleLoader`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Protocol

import grpc
from cachetools import LRUCache
from prometheus_client import Counter
from tensorwasm.common.v1.service_token import with_service_token
from tensorwasm.jit.v1 import jit_service_pb2 as jit_pb
from tensorwasm.jit.v1 import jit_service_pb2_grpc as jit_grpc
from tensorwasm_common.channels import channel_options, open_blocking_channel
from tensorwasm_common.digests import blake3_hex
from tensorwasm_common.tls import ClientTls

from tensorwasm_dispatcher.backends.discovery import CudaCallError

_log = logging.getLogger(__name__)

CUBIN_LOADS = Counter(
    "tensorwasm_dispatcher_cubin_loads",
    "PTX loads through cubin sharing, by outcome: local_hits, hits, misses, refused, puts, "
    "put_failures, replaced (a refused shared cubin overwritten).",
    ["outcome"],
)
DEFAULT_LOCAL_BYTES = 64 << 20


class ArtifactStore(Protocol):
    """Where cubins are shared (the jit cache)."""

    def get(self, ptx_digest: str, capability: str) -> bytes | None:
        """The stored cubin, or None (none stored, or the store cannot answer)."""

    def put(self, ptx_digest: str, capability: str, data: bytes, *, replace: bool = False) -> bool:
        """Stores a cubin (over a stored one with `replace`); False when the store refused
        or cannot answer."""

    def close(self) -> None:
        """Releases the store's connections."""


class ModuleLoader(Protocol):
    """The driver side (the cuda backend)."""

    def load_image(self, image: bytes) -> Any:
        """Loads a cubin or NUL-terminated PTX image into a module.

        Raises:
            CudaCallError: the driver refused it.
        """

    def compile_ptx(self, ptx: bytes) -> bytes:
        """The cubin the driver compiles a PTX to, for this device.

        Raises:
            CudaCallError: the driver refused the PTX.
        """


def ptx_digest(ptx: bytes) -> str:
    """BLAKE3 hex of the PTX text (trailing NULs are not part of it)."""
    return blake3_hex(ptx.rstrip(b"\0"))


@dataclasses.dataclass
class SharingStats:
    """What loads did: cubins loaded from the local LRU, shared cubins loaded, compiled
    here, puts done and failed, shared cubins the driver refused, and of the puts those
    that overwrote a refused one."""

    local_hits: int = 0
    hits: int = 0
    misses: int = 0
    puts: int = 0
    put_failures: int = 0
    refused: int = 0
    replaced: int = 0


class LocalCubins:
    """A thread-safe LRU of (PTX digest, capability) -> cubin bytes, bounded in bytes (a
    cubin larger than the bound is not kept; 0 keeps nothing)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: LRUCache[tuple[str, str], bytes] = LRUCache(maxsize=max_bytes, getsizeof=len)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def total_bytes(self) -> int:
        """The bytes of the cubins kept."""
        with self._lock:
            return int(self._entries.currsize)

    def get(self, key: tuple[str, str]) -> bytes | None:
        """The cubin, marked recently used, or None."""
        with self._lock:
            return self._entries.get(key)

    def put(self, key: tuple[str, str], data: bytes) -> None:
        """Keeps a cubin (replacing the key's), dropping the least recently used."""
        with self._lock:
            self._entries.pop(key, None)
            if len(data) <= self.max_bytes:
                self._entries[key] = data

    def discard(self, key: tuple[str, str]) -> None:
        """Forgets a cubin (the driver refused it)."""
        with self._lock:
            self._entries.pop(key, None)


class CubinSharing:
    """Loads PTX through the shared cubins of one compute capability."""

    def __init__(
        self, store: ArtifactStore, capability: str, *, local_bytes: int = DEFAULT_LOCAL_BYTES
    ) -> None:
        """Args: store: the jit cache. capability: this device's target, e.g. `sm_90`.
        local_bytes: the bound of the in-process LRU of cubins (0: none kept)."""
        self.store = store
        self.capability = capability
        self.stats = SharingStats()
        self.local = LocalCubins(local_bytes)
        self._lock = threading.Lock()

    def load(self, ptx: bytes, loader: ModuleLoader) -> Any:
        """The loaded module of a PTX: from the local or shared cubin, else compiled and
        shared (over a shared one the driver refused).

        Raises:
            CudaCallError: the driver refused the PTX (compiling or loading its cubin).
        """
        digest = ptx_digest(ptx)
        key = (digest, self.capability)
        local = self.local.get(key)
        if local is not None:
            try:
                module = loader.load_image(local)
            except CudaCallError:
                self.local.discard(key)  # cannot happen with one driver; never loop on it
            else:
                self._count("local_hits")
                return module
        refused = False
        shared = self.store.get(digest, self.capability)
        if shared is not None:
            try:
                module = loader.load_image(shared)
            except CudaCallError as exc:
                _log.warning(
                    "a shared cubin was refused; compiling the PTX and replacing it",
                    extra={"ptx_digest": digest, "result": exc.result_name},
                )
                self._count("refused")
                refused = True
            else:
                self._count("hits")
                self.local.put(key, shared)
                return module
        self._count("misses")
        cubin = loader.compile_ptx(ptx)
        module = loader.load_image(cubin)
        self.local.put(key, cubin)
        if self.store.put(digest, self.capability, cubin, replace=refused):
            self._count("puts")
            if refused:
                self._count("replaced")
        else:
            self._count("put_failures")
        return module

    def _count(self, field: str) -> None:
        with self._lock:
            setattr(self.stats, field, getattr(self.stats, field) + 1)
        CUBIN_LOADS.labels(field).inc()


class JitArtifactStore:
    """`ArtifactStore` over the jit cache's gRPC API; failures are logged and answer
    None / False (sharing is an optimisation, never a reason to fail a load)."""

    def __init__(
        self,
        address: str,
        *,
        timeout_seconds: float = 2.0,
        service_token: str | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        """Args: address: the jit cache's `host:port`. timeout_seconds: per call.
        service_token: the fleet's service token, sent on every call. tls: TLS (and the
        client certificate) of the channel; None: plaintext."""
        self._channel = open_blocking_channel(address, tls, channel_options(80 << 20))
        self._stub = jit_grpc.JitCacheServiceStub(with_service_token(self._channel, service_token))
        self._timeout = timeout_seconds

    def get(self, ptx_digest: str, capability: str) -> bytes | None:
        """The cubin whose bytes match the digest the jit cache gives, or None."""
        request = jit_pb.GetArtifactRequest(ptx_digest=ptx_digest, compute_capability=capability)
        try:
            response = self._stub.GetArtifact(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            if exc.code() is not grpc.StatusCode.NOT_FOUND:
                _log.warning("GetArtifact failed", extra={"code": exc.code().name})
            return None
        data = bytes(response.data)
        if blake3_hex(data) != response.data_digest:
            _log.warning("GetArtifact: the bytes do not match their digest", extra={})
            return None
        return data

    def put(self, ptx_digest: str, capability: str, data: bytes, *, replace: bool = False) -> bool:
        """Shares a cubin (over the stored one with `replace`); False when the jit cache
        refused it or did not answer."""
        request = jit_pb.PutArtifactRequest(
            ptx_digest=ptx_digest, compute_capability=capability, data=data, replace=replace
        )
        try:
            self._stub.PutArtifact(request, timeout=self._timeout)
        except grpc.RpcError as exc:
            _log.warning("PutArtifact failed", extra={"code": exc.code().name})
            return False
        return True

    def close(self) -> None:
        """Closes the channel."""
        self._channel.close()
