"""A thread's CPU time less the cyclic collector's passes run on it: what the inline
budget counts (inline.py), so that a collection which happens to fall inside a short
guest call is not charged to the guest (a full pass can take milliseconds, many times
the budget).

Importing the module registers one `gc.callbacks` hook; it adds a thread-local sum per
collection, nothing per call.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

_local = threading.local()


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    # Runs on the thread that collects, at the start and the stop of each pass.
    if phase == "start":
        _local.started = time.thread_time()
        return
    started = getattr(_local, "started", None)
    if started is not None:
        _local.collecting = getattr(_local, "collecting", 0.0) + time.thread_time() - started
        _local.started = None


gc.callbacks.append(_on_collection)


def guest_cpu_seconds() -> float:
    """This thread's CPU time (`time.thread_time()`) less its collector passes so far:
    only differences of two readings on one thread mean anything."""
    return time.thread_time() - getattr(_local, "collecting", 0.0)
