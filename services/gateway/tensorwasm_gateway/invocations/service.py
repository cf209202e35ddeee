"""Async invocations: resolve now, run in the background, record the outcome durably.

An invocation is PENDING once recorded, RUNNING once sent to an executor, then
SUCCEEDED (the guest returned) or FAILED (the guest failed: `outcome.failure`; or the
request failed: `error`). It is run at most once: an invocation interrupted by a
gateway stop is FAILED with INVOCATION_INTERRUPTED, never re-run, since the guest may
have run already. Finished invocations are kept `retention_seconds`, then purged.

Several gateways may share one registry database. Each gateway process has an id (new
per start) and holds a lease in the `gateways` table, renewed every
`heartbeat_seconds` for `lease_seconds`; each invocation records its owner. A gateway
fails (INVOCATION_INTERRUPTED) only the unfinished invocations whose owner's lease has
expired -- at start and at every heartbeat -- so a (re)starting replica never touches
the invocations a live one is running, and those of a killed one (its own previous
incarnation included) end once its lease runs out.

Live work is never failed because its owner was slow: the heartbeat runs on a thread of
its own (a busy or stalled event loop does not delay it), and a taker fails an owner's
invocations only if the lease it read as expired has not been renewed since, checked in
the same transaction that fails them (compare-and-set on the lease's renewal count).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable

from prometheus_client import Counter
from tensorwasm_common.deadlines import detached_context
from tensorwasm_common.errors import (
    InternalError,
    InvalidArgumentError,
    InvalidNameError,
    ServiceError,
)

from tensorwasm_gateway.calls import AddressedCall, Call
from tensorwasm_gateway.errors import AsyncCapacityExhaustedError, InvocationInterruptedError
from tensorwasm_gateway.functions import FunctionService
from tensorwasm_gateway.invocations.store import (
    FAILED,
    PENDING,
    SUCCEEDED,
    InvocationRecord,
    InvocationState,
    InvocationStore,
    finished,
)
from tensorwasm_gateway.metrics import JOBS_ACTIVE, tenant_label

_log = logging.getLogger(__name__)
MAX_REQUEST_ID_CHARS = 128
INVOCATION_ID = re.compile(r"[0-9a-f]{32}")

INVOCATIONS_FINISHED = Counter(
    "tensorwasm_gateway_invocations_finished",
    "Async invocations finished, by final state (succeeded, failed) and tenant.",
    ["state", "tenant"],
)


def invocation_id_from_name(name: str) -> str:
    """`invocations/{id}` -> id, validating the pattern."""
    prefix, _, invocation_id = name.partition("/")
    if prefix != "invocations" or not INVOCATION_ID.fullmatch(invocation_id):
        raise InvalidNameError(
            "name must be invocations/{id} with id of 32 lowercase hex digits",
            metadata={"name": name[:200]},
        )
    return invocation_id


def new_invocation_id(now_ns: int) -> str:
    """32 hex digits, ordered by creation time (then random)."""
    return f"{now_ns:016x}{secrets.token_hex(8)}"


# How an invocation's row keeps the error its call failed with (the edge's choice:
# the wire's `InvocationError`, which GetInvocation returns as is).
ErrorEncoder = Callable[[ServiceError], bytes]


def interrupted_error() -> InvocationInterruptedError:
    """The error of an invocation its gateway stopped under."""
    return InvocationInterruptedError(
        "the gateway stopped while the invocation was pending or running; "
        "it was not re-run (the guest may or may not have run)"
    )


class InvocationService:
    """Starts, runs, records and reports async invocations."""

    def __init__(
        self,
        functions: FunctionService,
        store: InvocationStore,
        *,
        encode_error: ErrorEncoder,
        retention_seconds: float,
        max_unfinished: int,
        lease_seconds: float = 30.0,
        clock_ns: Callable[[], int] = time.time_ns,
        gateway_id: str = "",
    ) -> None:
        self._functions = functions
        self._store = store
        self._encode_error = encode_error
        self._retention_ns = round(retention_seconds * 1e9)
        self._max_unfinished = max_unfinished
        self._lease_ns = round(lease_seconds * 1e9)
        self._clock_ns = clock_ns
        self.gateway_id = gateway_id or secrets.token_hex(8)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._heartbeat: threading.Thread | None = None
        self._stop_heartbeat = threading.Event()
        self._leased = False

    def recover(self) -> int:
        """At start: takes this gateway's lease, then fails the invocations whose
        owner's lease has expired; returns how many it failed."""
        self.renew_lease()
        _log.info("gateway lease taken", extra={"gateway_id": self.gateway_id})
        return self.fail_orphaned()

    def renew_lease(self) -> None:
        """Renews this gateway's lease (warns when it had lapsed: other gateways may
        have failed its unfinished invocations meanwhile)."""
        held = self._store.renew_lease(self.gateway_id, self._clock_ns(), self._lease_ns)
        if self._leased and not held:
            _log.warning(
                "this gateway's lease had expired (heartbeats stalled); other gateways "
                "may have failed its unfinished invocations",
                extra={"gateway_id": self.gateway_id},
            )
        self._leased = True

    def fail_orphaned(self) -> int:
        """Fails the unfinished invocations of gateways whose lease has expired."""
        now = self._clock_ns()
        expired = self._store.expired_leases(now)
        count = self._store.fail_orphaned(
            self.gateway_id,
            expired,
            self._encode_error(interrupted_error()),
            now,
            now + self._retention_ns,
        )
        if count:
            _log.warning(
                "%d invocations of stopped gateways (lease expired) marked failed", count,
                extra={"gateway_id": self.gateway_id},
            )  # fmt: skip
        return count

    def start_heartbeat(self, interval_seconds: float) -> None:
        """Every `interval_seconds`, on a thread of its own: renews the lease, then fails
        orphaned invocations."""

        def beat() -> None:
            while not self._stop_heartbeat.wait(interval_seconds):
                try:
                    self.renew_lease()
                    self.fail_orphaned()
                except Exception:  # a busy or failing database: try again next beat
                    _log.exception("gateway heartbeat failed")

        self._heartbeat = threading.Thread(target=beat, name="gateway-lease", daemon=True)
        self._heartbeat.start()

    def start_sweeping(self, interval_seconds: float) -> None:
        """Purges expired invocations every `interval_seconds` in the background."""

        async def sweep() -> None:
            while True:
                await asyncio.sleep(interval_seconds)
                try:
                    await asyncio.to_thread(self._store.purge_expired, self._clock_ns())
                except ServiceError:  # the database is away: sweep again next round
                    _log.exception("purging expired invocations failed")

        self._sweeper = asyncio.create_task(sweep())

    async def start(
        self,
        tenant: str,
        function_id: str,
        call: Call,
        request_id: str = "",
    ) -> InvocationRecord:
        """Resolves the call (its errors are raised here), records it PENDING and runs
        it in the background. A request_id the tenant used before returns that
        invocation instead."""
        if request_id:
            if len(request_id) > MAX_REQUEST_ID_CHARS or not request_id.isprintable():
                raise InvalidArgumentError(
                    "request_id must be 1-128 printable characters",
                    metadata={"field": "request_id"},
                )
            existing = await asyncio.to_thread(self._store.by_request_id, tenant, request_id)
            if existing is not None:
                return existing
        if len(self._tasks) >= self._max_unfinished:
            raise AsyncCapacityExhaustedError(
                f"the gateway holds {self._max_unfinished} unfinished invocations",
                metadata={"limit": str(self._max_unfinished)},
                retry_after_seconds=1.0,
            )
        addressed = await self._functions.resolve(tenant, function_id, call)
        now = self._clock_ns()
        record = InvocationRecord(
            tenant=tenant,
            invocation_id=new_invocation_id(now),
            function_id=function_id,
            export_name=addressed.export_name,
            state=PENDING,
            request_id=request_id or None,
            create_time_ns=now,
            owner=self.gateway_id,
        )
        stored = await asyncio.to_thread(self._store.insert, record)
        if stored.invocation_id != record.invocation_id:  # a concurrent twin won the id
            return stored
        # The job outlives this call: it runs under its own limits, not this call's deadline.
        self._tasks[record.invocation_id] = asyncio.create_task(
            self._run(record, addressed), context=detached_context()
        )
        JOBS_ACTIVE.set(len(self._tasks))
        return record

    async def _run(self, record: InvocationRecord, call: AddressedCall) -> None:
        outcome = error = b""
        try:
            await asyncio.to_thread(self._store.set_running, record.tenant, record.invocation_id)
            result = await self._functions.invoke_resolved(call)
            state = SUCCEEDED if result.succeeded else FAILED
            outcome = result.outcome.SerializeToString()
        except ServiceError as exc:
            state, error = FAILED, self._encode_error(exc)
        except asyncio.CancelledError:  # the gateway is stopping: record it, then end
            self._finish(record, FAILED, b"", self._encode_error(interrupted_error()))
            raise
        except Exception:
            _log.exception("async invocation %s failed", record.invocation_id)
            state, error = FAILED, self._encode_error(InternalError("internal error"))
        await asyncio.to_thread(self._finish, record, state, outcome, error)

    def _finish(
        self, record: InvocationRecord, state: InvocationState, outcome: bytes, error: bytes
    ) -> None:
        done = finished(
            record,
            state,
            outcome=outcome,
            error=error,
            end_time_ns=self._clock_ns(),
            retention_ns=self._retention_ns,
        )
        self._store.finish(done)
        self._tasks.pop(record.invocation_id, None)
        JOBS_ACTIVE.set(len(self._tasks))
        INVOCATIONS_FINISHED.labels(
            "succeeded" if state == SUCCEEDED else "failed", tenant_label(record.tenant)
        ).inc()

    async def get(self, tenant: str, invocation_id: str) -> InvocationRecord:
        """One unexpired invocation of the tenant."""
        return await asyncio.to_thread(self._store.get, tenant, invocation_id, self._clock_ns())

    async def list_page(self, tenant: str, after: str, limit: int) -> list[InvocationRecord]:
        """A page of the tenant's unexpired invocations after `after`, oldest first."""
        return await asyncio.to_thread(
            self._store.list_page, tenant, after, limit, self._clock_ns()
        )

    async def close(self, grace_seconds: float) -> None:
        """Lets running invocations finish for up to `grace_seconds`, then cancels the
        rest (recorded FAILED, INVOCATION_INTERRUPTED), and releases the lease."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_seconds)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._heartbeat is not None:
            self._stop_heartbeat.set()
            await asyncio.to_thread(self._heartbeat.join)
        await asyncio.to_thread(self._release)

    def _release(self) -> None:
        now = self._clock_ns()
        error = self._encode_error(interrupted_error())
        self._store.fail_owned(self.gateway_id, error, now, now + self._retention_ns)
        self._store.release_lease(self.gateway_id)
        _log.info("gateway lease released", extra={"gateway_id": self.gateway_id})
