"""The executor's own Prometheus series (gRPC requests live in tensorwasm_common), among
them the original system's `tensor_wasm_*` series that mean something here, so that
dashboards built for it keep working."""

from __future__ import annotations

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
