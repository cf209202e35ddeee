"""A thread-safe in-memory LRU of emitted kernels, keyed by their cache key."""

from __future__ import annotations

import threading
from collections import OrderedDict

from tensorwasm_jit.ptx_emit import EmittedKernel, KernelSpec, cache_key, emit


class KernelCache:
    """Least-recently-used cache of `EmittedKernel`s that emits on a miss.

    `hits`, `misses` and `evictions` count since construction. A spec that fails to emit
    raises and counts as neither a hit nor a miss.
    """

    def __init__(self, max_entries: int = 1024) -> None:
        """Creates an empty cache.

        Args:
            max_entries: How many kernels to keep; the least recently used goes first.

        Raises:
            ValueError: `max_entries` is less than 1.
        """
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, got {max_entries}")
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._entries: OrderedDict[str, EmittedKernel] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_emit(self, spec: KernelSpec) -> tuple[EmittedKernel, bool]:
        """Returns the cached kernel of a spec, emitting and caching it on a miss.

        Args:
            spec: The kernel spec.

        Returns:
            The kernel, and True when it came from the cache.

        Raises:
            UnknownOpError: No emitter is registered for the op.
            UnsupportedTargetError: The target is not supported.
            InvalidArgumentError: The dtype or parameters do not suit the op.
        """
        key = cache_key(spec)
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return found, True
        # Emitting is pure and cheap; doing it unlocked keeps lookups from waiting on it.
        kernel = emit(spec)
        with self._lock:
            self.misses += 1
            raced = self._entries.get(key)
            if raced is not None:
                # Another thread emitted the same spec meanwhile; keep its (equal) kernel.
                self._entries.move_to_end(key)
                return raced, False
            self._entries[key] = kernel
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
                self.evictions += 1
            return kernel, False

    def __contains__(self, key: object) -> bool:
        """Whether a kernel with this cache key is cached (does not touch the LRU order)."""
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        """The number of cached kernels."""
        with self._lock:
            return len(self._entries)
