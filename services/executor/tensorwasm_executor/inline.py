"""Which guest calls run on the event loop itself, without the hop to a worker thread.

Handing a call to a worker thread and its outcome back to the event loop costs about as
much CPU as a short guest itself (a condition wake-up, a GIL hand-over, a future and a
loop wake-up each way: about 250 µs per call on a loaded 2-core machine, against about
50 µs for a fresh store, instance and a `noop()`). So a fresh call of an export that has
been consistently short runs inline, on the loop's thread, speculatively:

- An export qualifies after `qualify_calls` consecutive runs (on workers) that each took
  less than the budget; one run over it, inline or not, and it starts again from zero.
  Runs are measured in the CPU time of their thread, not wall time: on a loaded machine a
  worker's wall time is mostly waiting for the GIL, which says nothing of the guest.
- An inline call is watched by the epoch callback: still running after the budget, it is
  stopped at the next epoch tick and run again from the start on a worker. That is safe
  because only calls that nothing outside their store can observe are run inline: a fresh
  store, output and `wasi:tensor` chunks collected for a unary answer, no host state (no
  `wasi:cuda`, no offload), no directory, and imports only from the non-blocking host
  modules (not `poll_oneoff`, which sleeps, nor sockets). The stopped attempt's output,
  chunks, clock and random reads are discarded; its instance counts in the metrics.
- A tenant whose inline calls overrun `STRIKES_PER_WINDOW` times within `WINDOW_SECONDS`
  runs all its calls on workers for the rest of that window, so no tenant can stall the
  loop (every tenant's calls) more than a few ticks a minute by alternating short and long
  calls.

The worst stall an overrunning call causes is one epoch tick plus the budget (10 ms and
1 ms by default), at most `STRIKES_PER_WINDOW` times per tenant per window.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

from cachetools import LRUCache
from prometheus_client import Counter

from tensorwasm_executor.wasm.engine import CompiledModule

STRIKES_PER_WINDOW = 4
WINDOW_SECONDS = 60.0
# Exports and modules remembered (least recently used forgotten: they qualify again).
MAX_KEYS = 10_000

# Host functions a fresh call may import and still run inline: none blocks the thread.
# WASI preview 1 minus the clock sleep (`poll_oneoff`) and the sockets.
_PREVIEW1 = "wasi_snapshot_preview1"
_BLOCKING_PREVIEW1 = frozenset({"poll_oneoff", "sock_accept", "sock_recv", "sock_send"})
_NON_BLOCKING_MODULES = frozenset({"wasi:tensor/host@0.1.0", "wasi:scheduler/host@0.1.0"})

INLINE_CALLS = Counter(
    "tensorwasm_executor_inline_calls",
    "Fresh guest calls run on the event loop rather than a worker thread, by result: "
    "completed, or preempted (over the inline budget: stopped and run again on a worker).",
    ["result"],
)
_COMPLETED = INLINE_CALLS.labels("completed")
_PREEMPTED = INLINE_CALLS.labels("preempted")


def imports_never_block(module: CompiledModule) -> bool:
    """Whether every import of `module` is a host function that returns without waiting."""
    for item in module.module.imports:
        if item.module == _PREVIEW1:
            if item.name in _BLOCKING_PREVIEW1:
                return False
        elif item.module not in _NON_BLOCKING_MODULES:
            return False
    return True


class InlinePolicy:
    """Decides, per (tenant, module, export), whether a fresh call runs inline; learns
    from every call's guest time. Thread-safe: worker threads report their runs."""

    def __init__(
        self,
        budget_seconds: float,
        qualify_calls: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget_seconds = budget_seconds
        self._qualify = qualify_calls
        self._now = clock
        self._lock = threading.Lock()
        # Consecutive short runs per (tenant, module digest, export).
        self._streaks: LRUCache[Hashable, int] = LRUCache(maxsize=MAX_KEYS)
        # Per module digest: whether its imports allow inline calls at all.
        self._safe: LRUCache[str, bool] = LRUCache(maxsize=MAX_KEYS)
        # Per tenant: (start of its window, overruns in it).
        self._strikes: LRUCache[str, tuple[float, int]] = LRUCache(maxsize=MAX_KEYS)

    @property
    def enabled(self) -> bool:
        return self.budget_seconds > 0

    def runs_inline(self, key: tuple[str, str, str], module: CompiledModule) -> bool:
        """Whether the next call of `key` = (tenant, module digest, export) runs inline.
        The caller has already checked that the call itself is one that may (unary, fresh,
        no host state, no directory)."""
        with self._lock:
            if self._streaks.get(key, 0) < self._qualify:
                return False
            struck = self._strikes.get(key[0])
            if struck is not None:
                started, count = struck
                if self._now() - started < WINDOW_SECONDS:
                    if count >= STRIKES_PER_WINDOW:
                        return False
                else:
                    del self._strikes[key[0]]
            safe = self._safe.get(module.digest)
        if safe is None:
            safe = imports_never_block(module)
            with self._lock:
                self._safe[module.digest] = safe
        return safe

    def ran(self, key: tuple[str, str, str], guest_seconds: float) -> None:
        """Records a completed run of `key` (inline or on a worker) and its guest time."""
        with self._lock:
            if guest_seconds < self.budget_seconds:
                self._streaks[key] = self._streaks.get(key, 0) + 1
            else:
                self._streaks[key] = 0

    def ran_inline(self, key: tuple[str, str, str], guest_seconds: float) -> None:
        """Records an inline call that completed; one over the budget is an overrun."""
        _COMPLETED.inc()
        if guest_seconds >= self.budget_seconds:
            self._overran(key)
        else:
            self.ran(key, guest_seconds)

    def preempted(self, key: tuple[str, str, str]) -> None:
        """Records an inline call stopped for overrunning the budget (it runs again on a
        worker)."""
        _PREEMPTED.inc()
        self._overran(key)

    def _overran(self, key: tuple[str, str, str]) -> None:
        tenant = key[0]
        with self._lock:
            self._streaks[key] = 0
            now = self._now()
            started, count = self._strikes.get(tenant, (now, 0))
            if now - started >= WINDOW_SECONDS:
                started, count = now, 0
            self._strikes[tenant] = (started, count + 1)
