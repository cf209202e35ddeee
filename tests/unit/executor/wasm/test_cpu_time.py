"""cpu_time.guest_cpu_seconds: the thread's CPU time less the collector's passes on it."""

from __future__ import annotations

import gc
import time

from tensorwasm_executor.wasm.cpu_time import guest_cpu_seconds


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_a_collection_on_this_thread_is_not_counted() -> None:
    gc.collect()
    garbage = [Node() for _ in range(300_000)]
    del garbage
    cpu, guest = time.thread_time(), guest_cpu_seconds()

    collected = gc.collect()

    spent_cpu, spent_guest = time.thread_time() - cpu, guest_cpu_seconds() - guest
    assert collected >= 300_000
    assert spent_cpu > 0.0  # the pass took CPU time (milliseconds for this many)...
    assert spent_guest < spent_cpu / 4  # ...and nearly none of it is the guest's


def test_without_a_collection_it_runs_with_the_threads_cpu_time() -> None:
    gc.disable()
    try:
        cpu, guest = time.thread_time(), guest_cpu_seconds()
        total = 0
        while time.thread_time() - cpu < 0.05:  # CPU time, not wall time
            total += 1
        spent_cpu, spent_guest = time.thread_time() - cpu, guest_cpu_seconds() - guest
    finally:
        gc.enable()
    assert total > 0
    assert spent_guest >= 0.9 * spent_cpu
