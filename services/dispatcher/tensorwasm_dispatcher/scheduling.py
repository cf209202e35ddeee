"""Fair scheduling of admitted batches onto the worker threads: per-tenant queues, DRR.

Each tenant has its own FIFO queue; the workers take batches from the tenants in turn by
deficit round robin (Shreedhar & Varghese): a batch costs its command count, a tenant
earns `quantum` per turn and is served while its credit covers its next batch. A tenant
flooding the dispatcher therefore waits behind itself: a light tenant's batch is served
after at most one quantum of every other tenant's work, however deep their backlogs.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from prometheus_client import Gauge

QUEUED = Gauge(
    "tensorwasm_dispatcher_queued_batches",
    "Batches admitted and waiting for a worker, by tenant.",
    ["tenant"],
)


@dataclass(eq=False)
class _Job:
    cost: int
    work: Callable[[], Any]
    future: Future[Any]


class FairScheduler:
    """Worker threads serving per-tenant queues by deficit round robin (thread-safe)."""

    def __init__(self, workers: int, *, quantum: int, name: str = "gpu") -> None:
        """Starts the workers.

        Args:
            workers: Threads that run jobs.
            quantum: Cost units a tenant earns per turn (at least 1).
            name: Prefix of the threads' names.
        """
        if workers < 1 or quantum < 1:
            raise ValueError("workers and quantum must be at least 1")
        self.quantum = quantum
        self._ready = threading.Condition()
        self._queues: dict[str, deque[_Job]] = {}
        self._ring: deque[str] = deque()  # tenants with queued jobs; the head is served
        self._credit: dict[str, int] = {}
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"{name}-{index}", daemon=True)
            for index in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, tenant: str, cost: int, work: Callable[[], Any]) -> Future[Any]:
        """Queues `work` for `tenant`; its future completes when a worker has run it.

        Raises:
            RuntimeError: the scheduler is shut down.
        """
        future: Future[Any] = Future()
        with self._ready:
            if self._stopping:
                raise RuntimeError("the scheduler is shut down")
            queue = self._queues.get(tenant)
            if queue is None:
                queue = self._queues[tenant] = deque()
                self._ring.append(tenant)
                self._credit[tenant] = 0
            queue.append(_Job(max(1, cost), work, future))
            self._ready.notify()
        QUEUED.labels(tenant).inc()
        return future

    def queued(self, tenant: str | None = None) -> int:
        """Jobs waiting for a worker, of one tenant or in all."""
        with self._ready:
            if tenant is not None:
                return len(self._queues.get(tenant, ()))
            return sum(len(queue) for queue in self._queues.values())

    def shutdown(self, *, cancel_queued: bool = True) -> None:
        """Stops the workers once running jobs end; queued jobs are cancelled (or run)."""
        with self._ready:
            self._stopping = True
            if cancel_queued:
                for tenant, queue in self._queues.items():
                    for job in queue:
                        job.future.cancel()
                    QUEUED.labels(tenant).dec(len(queue))
                self._queues.clear()
                self._ring.clear()
                self._credit.clear()
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()

    def _take(self) -> tuple[str, _Job]:
        """The next job by DRR (the lock must be held and a job queued)."""
        while True:
            tenant = self._ring[0]
            queue = self._queues[tenant]
            job = queue[0]
            if self._credit[tenant] >= job.cost:
                self._credit[tenant] -= job.cost
                queue.popleft()
                if not queue:  # an idle tenant keeps no credit
                    del self._queues[tenant], self._credit[tenant]
                    self._ring.popleft()
                    if self._ring:  # the next tenant's turn starts now
                        self._credit[self._ring[0]] += self.quantum
                return tenant, job
            # The head's credit is spent: the next tenant's turn, with a new quantum.
            self._ring.rotate(-1)
            self._credit[self._ring[0]] += self.quantum

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not self._ring and not self._stopping:
                    self._ready.wait()
                if not self._ring:
                    return
                tenant, job = self._take()
            QUEUED.labels(tenant).dec()
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                result = job.work()
            except BaseException as exc:
                job.future.set_exception(exc)
            else:
                job.future.set_result(result)
