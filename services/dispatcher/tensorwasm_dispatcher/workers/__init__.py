"""Worker processes that run batches: one per tenant (its own CUDA context), supervised.

`pool` (the dispatcher's side: start on demand, reuse, idle stop, LRU cap, the deadline
watchdog, crash containment and accounting) and `process` (the worker's side).
"""

from tensorwasm_dispatcher.workers.pool import SHARED_WORKER, WorkerPool

__all__ = ["SHARED_WORKER", "WorkerPool"]
