"""A bounded, verified byte store for the jit cache: files on local disk, or memory.

Each record is `[32-byte BLAKE3 of the payload][payload]`, written atomically
(`tensorwasm_common.files.write_atomically`) under `<root>/<name>`, and verified on every
read: a record that fails is deleted and reported as `ArtifactIntegrityError`. The store
keeps at most `max_bytes`; past that the least recently used records go first (counted in
`evictions` and the `tensorwasm_jit_cache_evictions_total{tier}` counter). Without a root,
records live in memory under the same bound.

The LRU order and the byte bound are a cachetools `LRUCache` of name -> payload bytes; the
records themselves (files, verification, restart order by mtime) are this module's.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable
from pathlib import Path

import blake3
from cachetools import LRUCache
from prometheus_client import Counter
from tensorwasm_common.files import TEMP_PREFIX, write_atomically

from tensorwasm_jit.errors import ArtifactIntegrityError

DIGEST_BYTES = 32
_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")
# Temp files of an interrupted write: `.tmp-*` (write_atomically), `*.part` (older versions).
_STALE_SUFFIX = ".part"


def _is_temp(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) or name.endswith(_STALE_SUFFIX)


EVICTIONS = Counter(
    "tensorwasm_jit_cache_evictions",
    "Entries the jit cache evicted to stay within its bounds, by tier.",
    ["tier"],
)
LOOKUPS = Counter(
    "tensorwasm_jit_cache_lookups",
    "Lookups of the jit cache by tier and result (hit, miss).",
    ["tier", "result"],
)


class _RecordIndex(LRUCache[str, int]):
    """Record name -> payload bytes, bounded in bytes; `on_evict` removes an evicted record."""

    def __init__(self, max_bytes: int, on_evict: Callable[[str], None]) -> None:
        super().__init__(maxsize=max_bytes, getsizeof=lambda size: size)
        self._on_evict = on_evict

    def popitem(self) -> tuple[str, int]:
        """Drops the least recently used name (cachetools calls this to make room)."""
        name, size = super().popitem()
        self._on_evict(name)
        return name, size


class ByteStore:
    """Named byte records, bounded in bytes, LRU-evicted; thread-safe."""

    def __init__(self, root: Path | None, *, max_bytes: int, tier: str) -> None:
        """Opens (or creates) the store, indexing the records already on disk.

        Args:
            root: The directory; None keeps records in memory.
            max_bytes: The most payload bytes kept.
            tier: The metrics label ("disk", "artifacts", ...).
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        self.root = root
        self.max_bytes = max_bytes
        self.tier = tier
        self.evictions = 0
        self._lock = threading.Lock()
        self._index = _RecordIndex(max_bytes, self._evicted)
        self._memory: dict[str, bytes] = {}
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
            files = [p for p in root.iterdir() if p.is_file()]
            for stale in (p for p in files if _is_temp(p.name)):
                stale.unlink(missing_ok=True)
            live = sorted(
                (p for p in files if _NAME.fullmatch(p.name) and not _is_temp(p.name)),
                key=lambda p: p.stat().st_mtime_ns,
            )
            for path in live:  # least recently used first: the index evicts as it fills
                size = max(0, path.stat().st_size - DIGEST_BYTES)
                if size > max_bytes:  # it and every older record are past the bound
                    while self._index:
                        self._index.popitem()
                    path.unlink(missing_ok=True)
                    self._count_eviction()
                else:
                    self._index[path.name] = size

    def names(self) -> list[str]:
        """The stored names (any order)."""
        with self._lock:
            return list(self._index)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._index

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    @property
    def total_bytes(self) -> int:
        """Payload bytes stored."""
        with self._lock:
            return int(self._index.currsize)

    def get(self, name: str) -> bytes | None:
        """The payload of `name`, verified, or None; marks it recently used.

        Raises:
            ArtifactIntegrityError: The record does not match its digest (now deleted).
        """
        with self._lock:
            if self._index.get(name) is None:  # a hit marks the name recently used
                LOOKUPS.labels(self.tier, "miss").inc()
                return None
            record = self._memory.get(name) if self.root is None else self._read(name)
        if record is None:
            self._forget(name)
            LOOKUPS.labels(self.tier, "miss").inc()
            return None
        digest, payload = record[:DIGEST_BYTES], record[DIGEST_BYTES:]
        if blake3.blake3(payload).digest() != digest:
            self._forget(name)
            raise ArtifactIntegrityError(
                f"stored record {name} does not match its digest; it was removed",
                metadata={"name": name},
            )
        LOOKUPS.labels(self.tier, "hit").inc()
        return payload

    def put(self, name: str, payload: bytes, *, replace: bool = False) -> bool:
        """Stores a payload under `name` unless it is there already (or, with `replace`,
        over it); returns True if stored anew.

        A payload larger than the whole bound is not stored (returns False).
        """
        if not _NAME.fullmatch(name) or _is_temp(name):
            raise ValueError(f"bad record name {name!r}")
        if len(payload) > self.max_bytes:
            return False
        record = blake3.blake3(payload).digest() + payload
        with self._lock:
            if self._index.get(name) is not None:  # marks it recently used
                if not replace:
                    return False
                del self._index[name]
                self._memory.pop(name, None)
            if self.root is None:
                self._memory[name] = record
            else:
                write_atomically(self.root / name, record)
            self._index[name] = len(payload)  # evicts least recently used records to fit
        return True

    def _read(self, name: str) -> bytes | None:
        assert self.root is not None
        path = self.root / name
        try:
            data = path.read_bytes()
            os.utime(path)  # the LRU order survives a restart
        except FileNotFoundError:
            return None
        return data

    def _forget(self, name: str) -> None:
        with self._lock:
            self._index.pop(name, None)
            self._memory.pop(name, None)
            if self.root is not None:
                (self.root / name).unlink(missing_ok=True)

    def _evicted(self, name: str) -> None:
        """Removes the record the index evicted (lock held, or in __init__)."""
        self._memory.pop(name, None)
        if self.root is not None:
            (self.root / name).unlink(missing_ok=True)
        self._count_eviction()

    def _count_eviction(self) -> None:
        self.evictions += 1
        EVICTIONS.labels(self.tier).inc()
