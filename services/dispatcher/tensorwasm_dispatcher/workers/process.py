"""The worker process: one tenant's (or tenant group's) own backend, sessions and quota.

`worker_main` runs in a child process started by `pool.WorkerPool`. It opens its own
backend (on the cuda backend: its own CUDA context, so its own address space and its own
sticky errors), its own session table and ledger, and runs the batches the dispatcher sends
it on a few threads, replying to each with the batch's result and the tenant's usage
after it. It ends when the dispatcher closes the connection, or is killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection

from tensorwasm_common.errors import ServiceError
from tensorwasm_common.gpu_batch import Batch, BatchResult

from tensorwasm_dispatcher.accounting import Ledger, TenantUsage
from tensorwasm_dispatcher.backends.opening import open_backend
from tensorwasm_dispatcher.batch_runner import Dispatcher
from tensorwasm_dispatcher.gpu_sessions import GpuSessionTable
from tensorwasm_dispatcher.settings import DispatcherSettings

__all__ = ["STICKY_ERROR_EXIT", "Failed", "Reply", "Request", "worker_main"]

# The worker's exit status when its device context broke (a CUDA sticky error).
STICKY_ERROR_EXIT = 70

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Request:
    """A batch to run for `tenant` by `deadline` (`time.monotonic()`, system-wide on
    Linux; None: unbounded); `request_id` matches the reply to it."""

    request_id: int
    tenant: str
    batch: Batch
    deadline: float | None = None


@dataclass(frozen=True)
class Reply:
    """A batch's result and the tenant's usage after it (`sequence` orders the usages)."""

    request_id: int
    result: BatchResult
    usage: TenantUsage
    sequence: int


@dataclass(frozen=True)
class Failed:
    """A batch refused as a whole: the error's class name, message and metadata."""

    request_id: int
    error: str
    message: str
    metadata: dict[str, str]


def worker_main(
    connection: Connection, settings: DispatcherSettings, environment: dict[str, str]
) -> None:
    """Serves batches from `connection` until it closes (runs in the worker process).

    `environment` (its MIG instance, its MPS share) is set before CUDA starts.
    """
    logging.basicConfig(level=logging.WARNING)
    os.environ.update(environment)
    _, backend = open_backend(settings)
    ledger = Ledger(settings.tenant_memory_quota_bytes)
    sessions = GpuSessionTable(
        backend,
        idle_ttl_seconds=settings.session_idle_ttl_seconds,
        max_sessions_per_tenant=settings.max_sessions_per_tenant,
        on_count=lambda tenant, delta: ledger.record(tenant, open_sessions=delta),
    )
    dispatcher = Dispatcher(backend, ledger, sessions)
    send_lock = threading.Lock()
    sequence = iter(range(1, 1 << 62))
    stop = threading.Event()

    def run(request: Request) -> None:
        try:
            result = dispatcher.execute(request.tenant, request.batch, request.deadline)
        except ServiceError as exc:
            message: Reply | Failed = Failed(
                request.request_id, type(exc).__name__, exc.message, dict(exc.metadata)
            )
        except Exception as exc:  # a bug: the batch fails as a whole, the worker lives on
            _log.exception("a batch failed unexpectedly")
            message = Failed(request.request_id, "InternalError", repr(exc), {})
        else:
            with send_lock:  # usages leave in the order they were read
                usage = ledger.usage(request.tenant)
                _send(connection, Reply(request.request_id, result, usage, next(sequence)))
            # A failed command may have broken the context for good: then this worker ends
            # (its reply sent) and the tenant's next batch gets a fresh context.
            if any(command.code for command in result.results) and not backend.healthy():
                _log.error("the device context hit a sticky error; the worker exits")
                os._exit(STICKY_ERROR_EXIT)
            return
        with send_lock:
            _send(connection, message)

    def sweep() -> None:
        while not stop.wait(settings.session_sweep_seconds):
            sessions.expire()

    threading.Thread(target=sweep, name="session-sweeper", daemon=True).start()
    with ThreadPoolExecutor(settings.worker_threads, thread_name_prefix="gpu-batch") as threads:
        while True:
            try:
                request = connection.recv()
            except (EOFError, OSError):
                break
            if request is None:
                break
            threads.submit(run, request)
    stop.set()
    sessions.close_all()
    backend.close()


def _send(connection: Connection, message: Reply | Failed) -> None:
    with contextlib.suppress(OSError):  # the dispatcher went away: nobody waits for it
        connection.send(message)
