"""The executor's own Prometheus series (gRPC requests live in tensorwasm_common), among
them the original system's `tensor_wasm_*` series that mean something here, so that
dashboards built for it keep working."""

from __future__ import annotations

import concurrent.futures
from typing import Any

from prometheus_client import Counter, Gauge

CHUNKS_EMITTED = Counter(
    "tensorwasm_executor_guest_chunks_emitted",
    "Chunks guests emitted with wasi:tensor emit_chunk and the executor accepted.",
)
KERNEL_DISPATCHES = Counter(
    "tensor_wasm_kernel_dispatches", "wasi:cuda kernel launches validated and queued."
)
INSTANCE_SPAWNS = Counter(
    "tensor_wasm_instance_spawns", "Wasm instances created (one per call, or a live instance)."
)
INSTANCE_TERMINATIONS = Counter(
    "tensor_wasm_instance_terminations", "Wasm instances ended (their store closed)."
)
ACTIVE_INSTANCES = Gauge("tensor_wasm_active_instances", "Wasm instances alive now.")
CAP_HITS = Counter(
    "tensorwasm_executor_cap_hits",
    "Guest calls during which a memory.grow or table.grow was refused by the executor's cap "
    "(the guest saw -1), by kind (memory, table).",
    ["kind"],
)


def count_cap_hits(future: concurrent.futures.Future[Any]) -> None:
    """A done-callback of a guest call's future: counts the caps its outcome ran into.

    The future's result is an Outcome, or a tuple holding one (instance creation); read by
    attribute, so that this module stays below the wasm layer that imports it.
    """
    if future.cancelled() or future.exception() is not None:
        return
    count_caps_hit_by(future.result())


def count_caps_hit_by(result: Any) -> None:
    """Counts the caps a guest call's result (as `count_cap_hits` reads it) ran into."""
    for outcome in result if isinstance(result, tuple) else (result,):
        if getattr(outcome, "memory_cap_hit", False):
            CAP_HITS.labels("memory").inc()
        if getattr(outcome, "table_cap_hit", False):
            CAP_HITS.labels("table").inc()
