"""The kernel cache: an in-memory LRU of emitted kernels over an optional disk tier.

A lookup canonicalises the spec (defaults filled in, validated), then tries memory, then
disk (verified), then emits and stores in both. Memory is bounded by entries and PTX bytes,
disk by bytes (`byte_store.ByteStore`); evictions are counted per tier (`evictions` here, and the
`tensorwasm_jit_cache_evictions_total{tier}` counter).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass

from cachetools import Cache, LRUCache

from tensorwasm_jit.byte_store import EVICTIONS, LOOKUPS, ByteStore
from tensorwasm_jit.errors import ArtifactIntegrityError
from tensorwasm_jit.ptx import EmittedKernel, KernelSpec, cache_key, canonical_spec, emit


@dataclass(frozen=True)
class CachedKernel:
    """A cached kernel and the canonical spec it was emitted for."""

    spec: KernelSpec
    kernel: EmittedKernel


class _KernelLRU(LRUCache[str, CachedKernel]):
    """The memory tier: an LRU bounded in PTX bytes that counts what it evicts."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(maxsize=max_bytes, getsizeof=lambda cached: len(cached.kernel.ptx))
        self.evictions = 0

    def popitem(self) -> tuple[str, CachedKernel]:
        """Drops the least recently used kernel (cachetools calls this to make room)."""
        item = super().popitem()
        self.evictions += 1
        EVICTIONS.labels("memory").inc()
        return item

    def snapshot(self) -> dict[str, CachedKernel]:
        """The kernels held, without marking any of them used."""
        return {key: Cache.__getitem__(self, key) for key in self}


class KernelCache:
    """Least-recently-used cache of `EmittedKernel`s that emits on a miss.

    `hits`, `misses` and `evictions` count the memory tier since construction (a disk hit
    is a memory miss). A spec that fails to emit raises and counts as neither.
    """

    def __init__(
        self, max_entries: int = 1024, *, max_bytes: int = 64 << 20, disk: ByteStore | None = None
    ) -> None:
        """Creates an empty memory tier over an optional disk tier.

        Raises:
            ValueError: `max_entries` or `max_bytes` is less than 1.
        """
        if max_entries < 1 or max_bytes < 1:
            raise ValueError(f"max_entries and max_bytes must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.disk = disk
        self.hits = 0
        self.misses = 0
        self._entries = _KernelLRU(max_bytes)
        self._lock = threading.Lock()

    def get_or_emit(self, spec: KernelSpec) -> tuple[EmittedKernel, bool]:
        """Returns the cached kernel of a spec, emitting and caching it on a miss.

        Returns:
            The kernel, and True when it came from the cache (memory or disk).

        Raises:
            UnknownOpError, UnsupportedTargetError, InvalidArgumentError: a bad spec.
        """
        full = canonical_spec(spec)
        key = cache_key(full)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self.hits += 1
                LOOKUPS.labels("memory", "hit").inc()
                return found.kernel, True
            self.misses += 1
        LOOKUPS.labels("memory", "miss").inc()
        cached = self._from_disk(key)
        from_disk = cached is not None
        if cached is None:
            # Emitting is pure and cheap; doing it unlocked keeps lookups from waiting on it.
            cached = CachedKernel(full, emit(full))
            if self.disk is not None:
                self.disk.put(key, _encode(cached))
        return self._remember(key, cached), from_disk

    def _from_disk(self, key: str) -> CachedKernel | None:
        if self.disk is None:
            return None
        try:
            payload = self.disk.get(key)
        except ArtifactIntegrityError:
            return None  # removed; emitted again below
        return None if payload is None else _decode(payload)

    @property
    def evictions(self) -> int:
        """Kernels dropped from memory to stay within `max_entries` and `max_bytes`."""
        with self._lock:
            return self._entries.evictions

    def _remember(self, key: str, cached: CachedKernel) -> EmittedKernel:
        with self._lock:
            raced = self._entries.get(key)
            if raced is not None:  # another thread got it meanwhile; keep its (equal) kernel
                return raced.kernel
            if len(cached.kernel.ptx) > self.max_bytes:
                return cached.kernel  # larger than the whole tier: served, never kept
            self._entries[key] = cached
            while len(self._entries) > self.max_entries:
                self._entries.popitem()
            return cached.kernel

    def list_page(self, after: str, page_size: int) -> tuple[list[CachedKernel], str]:
        """Up to `page_size` cached kernels with keys above `after`, by key; the last key
        of the page when more may follow, else ""."""
        with self._lock:
            in_memory = self._entries.snapshot()
        keys = set(in_memory) | set(self.disk.names() if self.disk is not None else ())
        ordered = sorted(key for key in keys if key > after)
        page: list[CachedKernel] = []
        for key in ordered:
            if len(page) == page_size:
                break
            cached = in_memory.get(key) or self._from_disk(key)
            if cached is not None:
                page.append(cached)
        more = len(ordered) > page_size and bool(page)
        return page, (page[-1].kernel.cache_key if more else "")

    def __contains__(self, key: object) -> bool:
        """Whether a kernel with this cache key is in memory (does not touch the LRU order)."""
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        """The number of kernels in memory."""
        with self._lock:
            return len(self._entries)


def _encode(cached: CachedKernel) -> bytes:
    spec, kernel = cached.spec, cached.kernel
    record = {
        "op": spec.op,
        "params": [list(pair) for pair in spec.params],
        "dtype": spec.dtype,
        "target": spec.target,
        "cache_key": kernel.cache_key,
        "ptx": kernel.ptx,
        "entry": kernel.entry,
        "ptx_digest": kernel.ptx_digest,
    }
    return json.dumps(record, sort_keys=True).encode("utf-8")


def _decode(payload: bytes) -> CachedKernel | None:
    """A disk record, or None when it is from another emitter version or malformed."""
    try:
        record = json.loads(payload)
        spec = KernelSpec(
            record["op"], [tuple(p) for p in record["params"]], record["dtype"], record["target"]
        )
        kernel = EmittedKernel(
            cache_key=record["cache_key"],
            ptx=record["ptx"],
            entry=record["entry"],
            target=record["target"],
            ptx_digest=record["ptx_digest"],
        )
    except (ValueError, KeyError, TypeError):
        return None
    # The key embeds the emitter version: a record of an older emitter never matches.
    return CachedKernel(spec, kernel) if cache_key(spec) == kernel.cache_key else None
