"""Function records cached for Invoke's lookup, invalidated by change notifications.

A read that raced a change must not fill the cache with what the change replaced: `put`
carries the generation read before the database read, and is dropped when any
invalidation happened since (a coarse but safe rule: changes are rare next to calls).
Bounded by cachetools' LRU, so a gateway serving many functions keeps the hot ones.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

from cachetools import LRUCache

Value = TypeVar("Value")
Key = tuple[str, str]  # (tenant, function_id)

DEFAULT_MAX_ENTRIES = 100_000


class FunctionCache(Generic[Value]):
    """Thread-safe: the listener thread invalidates while the event loop reads."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._entries: LRUCache[Key, Value] = LRUCache(maxsize=max_entries)
        self._lock = threading.Lock()
        self._generation = 0

    @property
    def generation(self) -> int:
        """Counts invalidations; read it before a database read that may `put`."""
        return self._generation

    def get(self, key: Key) -> Value | None:
        """The cached value, or None."""
        with self._lock:
            return self._entries.get(key)

    def put(self, key: Key, value: Value, generation: int) -> None:
        """Caches `value` unless an invalidation happened since `generation` was read."""
        with self._lock:
            if generation == self._generation:
                self._entries[key] = value

    def invalidate(self, key: Key) -> None:
        """Forgets one key (and voids reads in flight)."""
        with self._lock:
            self._generation += 1
            self._entries.pop(key, None)

    def clear(self) -> None:
        """Forgets everything (the notifications may have been missed)."""
        with self._lock:
            self._generation += 1
            self._entries.clear()
