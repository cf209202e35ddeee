"""Fair worker pools: a fixed set of threads serving per-tenant queues round robin, with a
cap on how many threads one tenant may hold at once.

Hand-written because no pool in the standard library or a well-kept package schedules by
owner: `ThreadPoolExecutor` is one FIFO, so a tenant that submits many long calls holds
every worker until its deadlines pass while another tenant's short call waits behind
them. Here each tenant has its own queue; a free worker takes the next call of the next
tenant in turn (deficit round robin with a quantum of one call, since a call's cost is
unknown until it ran) among the tenants below their running share. One tenant's calls
beyond its share wait in its own queue and never delay another tenant's.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import Gauge

T = TypeVar("T")
QUEUED = Gauge(
    "tensorwasm_executor_queued_calls",
    "Calls waiting for a worker, by pool (guest: guest calls; compile: compiles).",
    ["pool"],
)


@dataclass
class _Call:
    future: concurrent.futures.Future[Any]
    function: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class FairPool:
    """Runs callables on `workers` threads, at most `max_running_per_tenant` per tenant.

    `submit` never blocks and never refuses (admission bounds what is queued); a queued
    call whose future is cancelled never runs.
    """

    def __init__(
        self, workers: int, max_running_per_tenant: int, *, thread_name_prefix: str = "worker"
    ) -> None:
        if workers < 1 or max_running_per_tenant < 1:
            raise ValueError("workers and max_running_per_tenant must be at least 1")
        self.workers = workers
        self.max_running_per_tenant = max_running_per_tenant
        self._ready = threading.Condition()
        self._queues: dict[str, collections.deque[_Call]] = {}
        # Tenants with queued calls, in their round-robin order.
        self._turns: collections.deque[str] = collections.deque()
        self._running: collections.Counter[str] = collections.Counter()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, name=f"{thread_name_prefix}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()
        pool = weakref.ref(self)
        QUEUED.labels(thread_name_prefix).set_function(
            lambda: float(p.queued_total()) if (p := pool()) is not None else 0.0
        )

    def queued_total(self) -> int:
        """Every tenant's calls waiting for a worker."""
        with self._ready:
            return sum(len(queue) for queue in self._queues.values())

    def submit(
        self, tenant: str, function: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        """Queues `function(*args, **kwargs)` for `tenant`; its future has the result.

        Raises:
            RuntimeError: the pool is shut down.
        """
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the pool is shut down")
            queue = self._queues.get(tenant)
            if queue is None:
                queue = self._queues[tenant] = collections.deque()
                self._turns.append(tenant)
            queue.append(_Call(future, function, args, kwargs))
            self._ready.notify()
        return future

    def running(self, tenant: str) -> int:
        """The tenant's calls on a worker now."""
        with self._ready:
            return self._running[tenant]

    def queued(self, tenant: str) -> int:
        """The tenant's calls waiting for a worker."""
        with self._ready:
            queue = self._queues.get(tenant)
            return len(queue) if queue is not None else 0

    def _next(self) -> tuple[str, _Call] | None:
        """The next call to run: the first tenant in turn below its share. Under the lock."""
        for _ in range(len(self._turns)):
            tenant = self._turns[0]
            self._turns.rotate(-1)
            if self._running[tenant] >= self.max_running_per_tenant:
                continue
            queue = self._queues[tenant]
            call = queue.popleft()
            if not queue:
                del self._queues[tenant]
                self._turns.remove(tenant)
            return tenant, call
        return None

    def _serve(self) -> None:
        while True:
            with self._ready:
                picked = self._next()
                while picked is None:
                    if self._closed:
                        return
                    self._ready.wait()
                    picked = self._next()
                tenant, call = picked
                self._running[tenant] += 1
            try:
                if call.future.set_running_or_notify_cancel():
                    try:
                        result = call.function(*call.args, **call.kwargs)
                    except BaseException as exc:  # handed to the caller through the future
                        call.future.set_exception(exc)
                    else:
                        call.future.set_result(result)
            finally:
                with self._ready:
                    self._running[tenant] -= 1
                    if not self._running[tenant]:
                        del self._running[tenant]
                # No wake-up needed: this worker looks for the next call itself, and the
                # one slot it freed admits at most one waiting call (waking every idle
                # worker for it would cost a thundering herd on every call).

    def shutdown(self, *, cancel_futures: bool = True) -> None:
        """Stops the workers once idle; queued calls are cancelled (or run, if not)."""
        with self._ready:
            self._closed = True
            if cancel_futures:
                for queue in self._queues.values():
                    for call in queue:
                        call.future.cancel()
                self._queues.clear()
                self._turns.clear()
            self._ready.notify_all()

    def executor_for(self, tenant: str) -> concurrent.futures.Executor:
        """This pool as a standard `Executor` whose calls all belong to `tenant`."""
        return _TenantExecutor(self, tenant)


class _TenantExecutor(concurrent.futures.Executor):
    def __init__(self, pool: FairPool, tenant: str) -> None:
        self._pool = pool
        self._tenant = tenant

    def submit(
        self, fn: Callable[..., T], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[T]:
        return self._pool.submit(self._tenant, fn, *args, **kwargs)


def pool_for(
    pool: concurrent.futures.Executor | FairPool, tenant: str
) -> concurrent.futures.Executor:
    """`pool` for `tenant`'s work: a fair pool's view for the tenant, else `pool` itself."""
    return pool.executor_for(tenant) if isinstance(pool, FairPool) else pool
