"""The supervised worker processes: one per tenant (or one shared), started on demand.

The dispatcher keeps admission, fair scheduling and the gRPC edge; each batch is run by
its tenant's worker (`process.worker_main`), which owns that tenant's backend (its own
CUDA context), sessions, device buffers and memory quota. So a faulting kernel, a sticky
CUDA error, a crash or a hung kernel ends one worker: the batches it was running fail with
`launch_failed` and the reason, its sessions and buffers are gone (and un-counted), and the
next batch of that tenant starts a fresh worker while every other tenant runs on.

Workers are reused, stopped once idle (`worker_idle_seconds`, and only without open
sessions until the session TTL has passed), and capped in number (`max_workers`; at the
cap the least recently used idle worker is stopped, and with none idle the batch is
refused with RESOURCE_EXHAUSTED). A batch still running at its deadline stops its worker.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from prometheus_client import Counter, Gauge
from tensorwasm_common.gpu_abi import AbiError
from tensorwasm_common.gpu_batch import Batch, BatchResult, CommandResult

from tensorwasm_dispatcher.accounting import Ledger, TenantUsage
from tensorwasm_dispatcher.errors import DispatcherSaturatedError, InvalidBatchError
from tensorwasm_dispatcher.settings import DispatcherSettings
from tensorwasm_dispatcher.workers.placement import MigInstance, Placement, Topology
from tensorwasm_dispatcher.workers.process import (
    STICKY_ERROR_EXIT,
    Failed,
    Reply,
    Request,
    worker_main,
)

__all__ = ["SHARED_WORKER", "WorkerPool"]

_log = logging.getLogger(__name__)

WORKERS = Gauge("tensorwasm_dispatcher_workers", "GPU worker processes running.")
WORKER_EXITS = Counter(
    "tensorwasm_dispatcher_worker_exits",
    "GPU worker processes that ended, by cause (idle, evicted, deadline, crashed, shutdown).",
    ["cause"],
)
# How long past a batch's deadline its worker may take to answer before it is stopped.
KILL_GRACE_SECONDS = 2.0
# The key of the one worker every tenant shares under `worker_isolation=shared`.
SHARED_WORKER = "*"


class _WorkerDiedError(Exception):
    """The worker ended before it answered; the message says why."""


@dataclass(eq=False)
class _Worker:
    key: str
    process: BaseProcess
    connection: Connection
    started: float
    last_used: float
    pending: dict[int, concurrent.futures.Future[Reply | Failed]] = field(default_factory=dict)
    send_lock: threading.Lock = field(default_factory=threading.Lock)
    # Why it was stopped (None: it was not; then its exit is a crash).
    stopping: tuple[str, str] | None = None
    open_sessions: int = 0
    instance: MigInstance | None = None


class WorkerPool:
    """Runs each batch in its tenant's worker process; thread-safe (called from the
    scheduler's threads)."""

    def __init__(
        self,
        settings: DispatcherSettings,
        ledger: Ledger,
        *,
        topology: Topology | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self.placement = Placement(
            topology or Topology(),
            policy=settings.mig_placement,
            assignments=settings.mig_assignment_map,
            default_percentage=settings.mps_thread_percentage,
            percentages=settings.mps_percentage_map,
            memory_quota_bytes=settings.tenant_memory_quota_bytes,
        )
        self._shared = settings.worker_isolation == "shared"
        self.ledger = ledger
        self._clock = clock
        self._context = multiprocessing.get_context("spawn")  # no fork of a threaded parent
        self._lock = threading.Lock()
        self._workers: dict[str, _Worker] = {}
        self._ids = itertools.count(1)
        # Per tenant: the last usage its worker reported, and that report's sequence.
        self._reported: dict[str, tuple[int, TenantUsage]] = {}
        self._closed = False

    def execute(self, tenant: str, batch: Batch, deadline: float | None = None) -> BatchResult:
        """Runs `batch` in the tenant's worker (blocking) and returns its result.

        `deadline` (`time.monotonic()`): the worker ends what still runs then; past it by
        `KILL_GRACE_SECONDS` without an answer, the worker is stopped and every command of
        the batch fails with launch_failed.

        Raises:
            InvalidBatchError: the batch itself is malformed.
            DispatcherSaturatedError: `max_workers` workers are busy.
        """
        worker = self._worker_for(tenant)
        request_id = next(self._ids)
        future: concurrent.futures.Future[Reply | Failed] = concurrent.futures.Future()
        with self._lock:
            worker.pending[request_id] = future
        try:
            with worker.send_lock:
                worker.connection.send(Request(request_id, tenant, batch, deadline))
        except (OSError, ValueError):
            self._stop(worker, "crashed", "the tenant's GPU worker could not be reached")
        # The worker ends launches still running at the deadline itself (ending the session);
        # one that has not answered a grace period later is stopped (a kernel the backend
        # cannot stop, a hung worker).
        timeout = (
            None if deadline is None else max(0.0, deadline - self._clock()) + KILL_GRACE_SECONDS
        )
        try:
            try:
                answer = future.result(timeout)
            except concurrent.futures.TimeoutError:
                self._stop(
                    worker,
                    "deadline",
                    "the batch was still running at the call's deadline; the tenant's GPU "
                    "worker was stopped",
                )
                answer = future.result()
        except _WorkerDiedError as died:
            return self._failed(tenant, batch, str(died))
        finally:
            with self._lock:
                worker.pending.pop(request_id, None)
                worker.last_used = self._clock()
        if isinstance(answer, Failed):
            if answer.error == InvalidBatchError.__name__:
                raise InvalidBatchError(answer.message, metadata=answer.metadata)
            return self._failed(
                tenant, batch, f"the batch failed in the GPU worker: {answer.message}"
            )
        self._absorb(tenant, answer.sequence, answer.usage)
        with self._lock:
            worker.open_sessions = answer.usage.open_sessions
        return replace(
            answer.result, tenant_kernel_seconds=self.ledger.usage(tenant).kernel_seconds
        )

    def workers(self) -> dict[str, int]:
        """The running workers: key (tenant, or `*` when shared) -> process id."""
        with self._lock:
            return {key: worker.process.pid or 0 for key, worker in self._workers.items()}

    def sweep(self) -> int:
        """Stops workers idle for `worker_idle_seconds` (with open sessions: only once the
        session TTL has passed too); returns how many."""
        now = self._clock()
        idle_after = self._settings.worker_idle_seconds
        session_ttl = self._settings.session_idle_ttl_seconds
        with self._lock:
            idle = [
                worker
                for worker in self._workers.values()
                if not worker.pending
                and now - worker.last_used >= idle_after
                and (not worker.open_sessions or now - worker.last_used >= session_ttl)
            ]
        for worker in idle:
            self._stop(worker, "idle", "the worker was idle", graceful=True)
        return len(idle)

    def close(self) -> None:
        """Stops every worker (shutdown); later batches are refused."""
        with self._lock:
            self._closed = True
            everything = list(self._workers.values())
        for worker in everything:
            self._stop(worker, "shutdown", "the dispatcher is shutting down", graceful=True)
        for worker in everything:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()

    # -- workers --------------------------------------------------------------------------

    def _worker_for(self, tenant: str) -> _Worker:
        key = SHARED_WORKER if self._shared else tenant
        evicted = None
        with self._lock:
            if self._closed:
                raise DispatcherSaturatedError("the dispatcher is shutting down")
            worker = self._workers.get(key)
            if worker is not None:
                worker.last_used = self._clock()
                return worker
            if len(self._workers) >= self._settings.max_workers:
                evicted = self._evictable()
                if evicted is None:
                    raise DispatcherSaturatedError(
                        f"all {self._settings.max_workers} GPU workers are busy",
                        metadata={"limit": str(self._settings.max_workers)},
                        retry_after_seconds=self._settings.retry_after_seconds,
                    )
                del self._workers[evicted.key]
            worker = self._start(key)
            self._workers[key] = worker
        if evicted is not None:
            self._stop(
                evicted, "evicted", "the worker was evicted for another tenant's", graceful=True
            )
        return worker

    def _evictable(self) -> _Worker | None:
        """The least recently used idle worker, preferring those without sessions."""
        idle = [worker for worker in self._workers.values() if not worker.pending]
        if not idle:
            return None
        return min(idle, key=lambda worker: (worker.open_sessions > 0, worker.last_used))

    def _start(self, key: str) -> _Worker:
        instance = self.placement.instance_for(key)
        environment = self.placement.environment(key, instance)
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=worker_main,
            args=(child, self._settings, environment),
            name=f"gpu-worker-{key}",
            daemon=True,
        )
        process.start()
        child.close()
        now = self._clock()
        worker = _Worker(key, process, parent, started=now, last_used=now, instance=instance)
        threading.Thread(
            target=self._read, args=(worker,), name=f"gpu-worker-reader-{key}", daemon=True
        ).start()
        WORKERS.inc()
        _log.info("GPU worker started", extra={"worker": key, "pid": process.pid})
        return worker

    def _read(self, worker: _Worker) -> None:
        """Hands each reply to its waiting batch; on the worker's end, fails the rest."""
        while True:
            try:
                answer = worker.connection.recv()
            except (EOFError, OSError):
                break
            except Exception:  # an unreadable reply: the worker is no longer trusted
                _log.exception("unreadable reply from a GPU worker", extra={"worker": worker.key})
                worker.process.kill()
                break
            with self._lock:
                future = worker.pending.get(answer.request_id)
            if future is not None and not future.done():
                future.set_result(answer)
        self._exited(worker)

    def _exited(self, worker: _Worker) -> None:
        worker.process.join()
        cause, reason = worker.stopping or ("crashed", _exit_reason(worker.process.exitcode))
        with self._lock:
            if self._workers.get(worker.key) is worker:
                del self._workers[worker.key]
            pending = list(worker.pending.values())
        worker.connection.close()
        for future in pending:
            if not future.done():
                future.set_exception(_WorkerDiedError(reason))
        self._forget_state(worker)
        self.placement.released(worker.key, worker.instance)
        WORKERS.dec()
        WORKER_EXITS.labels(cause).inc()
        log = _log.warning if cause in ("crashed", "deadline") else _log.info
        log("GPU worker ended", extra={"worker": worker.key, "cause": cause, "reason": reason})

    def _stop(self, worker: _Worker, cause: str, reason: str, *, graceful: bool = False) -> None:
        """Ends a worker: asks it to finish (graceful) or kills it; `_read` cleans up."""
        with self._lock:
            if worker.stopping is None:
                worker.stopping = (cause, reason)
            if self._workers.get(worker.key) is worker:
                del self._workers[worker.key]
        if graceful:
            try:
                with worker.send_lock:
                    worker.connection.send(None)
                return
            except (OSError, ValueError):
                pass
        worker.process.kill()

    # -- accounting -----------------------------------------------------------------------

    def _absorb(self, tenant: str, sequence: int, usage: TenantUsage) -> None:
        """Brings the dispatcher's ledger up to the worker's newest report of `tenant`."""
        with self._lock:
            last = self._reported.get(tenant)
            if last is not None and last[0] >= sequence:
                return  # an older report, overtaken
            self._reported[tenant] = (sequence, usage)
            before = last[1] if last is not None else TenantUsage(tenant)
        self.ledger.absorb(tenant, before, usage)

    def _forget_state(self, worker: _Worker) -> None:
        """Un-counts what died with a worker (staged bytes, sessions, device buffers); the
        cumulative counters stay, and a new worker's reports start from zero."""
        with self._lock:
            tenants = [t for t in self._reported if self._shared or t == worker.key]
            reports = {t: self._reported.pop(t)[1] for t in tenants}
        for tenant, usage in reports.items():
            # The cumulative counters stay; a new worker's reports add to them from zero.
            self.ledger.absorb(tenant, usage, _without_current(usage))

    def _failed(self, tenant: str, batch: Batch, reason: str) -> BatchResult:
        """Every command of `batch` failed with launch_failed and `reason`."""
        result = CommandResult(int(AbiError.LAUNCH_FAILED), reason)
        self.ledger.record(tenant, failed_commands=len(batch.commands), execute_requests=1)
        return BatchResult(
            tuple(result for _ in batch.commands),
            {},
            0.0,
            self.ledger.usage(tenant).kernel_seconds,
        )


def _without_current(usage: TenantUsage) -> TenantUsage:
    return replace(
        usage, staged_bytes_current=0, open_sessions=0, device_buffers=0, device_buffer_bytes=0
    )


def _exit_reason(exitcode: int | None) -> str:
    if exitcode == STICKY_ERROR_EXIT:
        return (
            "the tenant's device context hit a sticky error (e.g. an illegal address); its "
            "GPU worker was restarted"
        )
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"the tenant's GPU worker was killed by {name}"
    return f"the tenant's GPU worker exited with status {exitcode}"
