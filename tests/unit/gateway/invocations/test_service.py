"""Unit tests for async invocations: states, outcomes, request ids, retention, restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from tensorwasm.common.v1 import invocation_pb2, values_pb2
from tensorwasm.executor.v1 import executor_service_pb2 as executor_pb
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm_common.channels import TENANT_METADATA_KEY
from tensorwasm_common.errors import Code, ServiceError
from tensorwasm_gateway.calls import AddressedCall, Call, CallResult, Target
from tensorwasm_gateway.errors import (
    AsyncCapacityExhaustedError,
    FunctionNotFoundError,
    InvocationNotFoundError,
)
from tensorwasm_gateway.functions.registry import Registry
from tensorwasm_gateway.invocations.service import InvocationService
from tensorwasm_gateway.invocations.store import (
    FAILED,
    RUNNING,
    InvocationRecord,
    InvocationStore,
)
from tensorwasm_gateway.routing.executors import call_result
from tensorwasm_gateway.servicer import GatewayServicer
from tensorwasm_gateway.wire import encode_invocation_error

SECOND = 1_000_000_000


class FakeFunctions:
    """Resolves `functions/add` only; each call waits for `release`, then answers."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0
        self.answer: executor_pb.InvokeResponse | ServiceError = executor_pb.InvokeResponse(
            outcome=invocation_pb2.InvocationOutcome(
                success=invocation_pb2.InvocationSuccess(results=[values_pb2.Value(i32=3)])
            )
        )

    async def resolve(self, tenant: str, function_id: str, call: Call) -> AddressedCall:
        if function_id != "add":
            raise FunctionNotFoundError(f"function {function_id!r} not found")
        return AddressedCall(Target(tenant, "00" * 32), call.export_name or "add")

    async def invoke_resolved(self, call: AddressedCall) -> CallResult:
        self.calls += 1
        await self.release.wait()
        if isinstance(self.answer, ServiceError):
            raise self.answer
        return call_result(self.answer.outcome)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000 * SECOND

    def __call__(self) -> int:
        return self.now


def make(tmp_path: Path, **kwargs: Any) -> tuple[InvocationService, FakeFunctions, Clock]:
    functions = FakeFunctions()
    clock = Clock()
    service = InvocationService(
        functions,  # type: ignore[arg-type]
        InvocationStore(Registry(tmp_path / "registry.sqlite3")),
        encode_error=encode_invocation_error,
        retention_seconds=kwargs.get("retention_seconds", 60.0),
        max_unfinished=kwargs.get("max_unfinished", 100),
        clock_ns=clock,
    )
    return service, functions, clock


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())  # type: ignore[arg-type]


# Bounds a wait for a condition: long enough for a loaded machine, short of a hang.
WAIT_SECONDS = 60.0


async def settle(service: InvocationService, tenant: str, invocation_id: str) -> InvocationRecord:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        record = await service.get(tenant, invocation_id)
        if record.finished:
            return record
        await asyncio.sleep(0.01)
    raise AssertionError("the invocation did not finish")


async def until_running(service: InvocationService, tenant: str, invocation_id: str) -> None:
    """Waits until the invocation is recorded RUNNING (its job has called the function)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while (await service.get(tenant, invocation_id)).state != RUNNING:
        assert time.monotonic() < deadline, "the invocation never ran"
        await asyncio.sleep(0.01)


async def until_jobs_done(service: InvocationService) -> None:
    """Waits until the service's invocation jobs have all ended (their results recorded)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while service._tasks:
        assert time.monotonic() < deadline, "the invocation jobs never ended"
        await asyncio.sleep(0.01)


def test_an_invocation_is_pending_then_succeeds_with_its_outcome(tmp_path: Path) -> None:
    async def scenario() -> None:
        service, functions, _ = make(tmp_path)
        record = await service.start("acme", "add", Call())
        assert record.state == pb.INVOCATION_STATE_PENDING
        assert record.export_name == "add"
        await until_running(service, "acme", record.invocation_id)
        assert (await service.get("acme", record.invocation_id)).state == RUNNING
        functions.release.set()
        done = await settle(service, "acme", record.invocation_id)
        assert done.state == pb.INVOCATION_STATE_SUCCEEDED
        outcome = invocation_pb2.InvocationOutcome.FromString(done.outcome)
        assert [v.i32 for v in outcome.success.results] == [3]
        assert (
            done.end_time_ns is not None and done.expire_time_ns == done.end_time_ns + 60 * SECOND
        )
        assert functions.calls == 1

    run(scenario)


def test_a_guest_failure_and_a_request_failure_are_failed_invocations(tmp_path: Path) -> None:
    async def scenario() -> None:
        service, functions, _ = make(tmp_path)
        functions.release.set()
        functions.answer = executor_pb.InvokeResponse(
            outcome=invocation_pb2.InvocationOutcome(
                failure=invocation_pb2.InvocationFailure(reason="TRAP")
            )
        )
        trapped = await service.start("acme", "add", Call())
        done = await settle(service, "acme", trapped.invocation_id)
        assert done.state == FAILED
        assert invocation_pb2.InvocationOutcome.FromString(done.outcome).failure.reason == "TRAP"
        assert done.error == b""
        functions.answer = ServiceError(
            "busy", code=Code.RESOURCE_EXHAUSTED, reason="EXECUTOR_SATURATED"
        )
        refused = await service.start("acme", "add", Call())
        done = await settle(service, "acme", refused.invocation_id)
        error = pb.InvocationError.FromString(done.error)
        assert (done.state, error.code, error.reason) == (FAILED, 8, "EXECUTOR_SATURATED")
        assert done.outcome == b""

    run(scenario)


def test_resolution_errors_are_the_start_calls_own(tmp_path: Path) -> None:
    async def scenario() -> None:
        service, functions, _ = make(tmp_path)
        with pytest.raises(FunctionNotFoundError):
            await service.start("acme", "nope", Call())
        assert await service.list_page("acme", "", 10) == []
        assert functions.calls == 0

    run(scenario)


def test_a_repeated_request_id_returns_the_first_invocation(tmp_path: Path) -> None:
    async def scenario() -> None:
        service, functions, _ = make(tmp_path)
        first = await service.start("acme", "add", Call(), "req-1")
        again = await service.start("acme", "add", Call(), "req-1")
        other_tenant = await service.start("beta", "add", Call(), "req-1")
        assert again.invocation_id == first.invocation_id
        assert other_tenant.invocation_id != first.invocation_id
        functions.release.set()
        await settle(service, "acme", first.invocation_id)
        await settle(service, "beta", other_tenant.invocation_id)
        assert functions.calls == 2

    run(scenario)


def test_unfinished_invocations_are_capped(tmp_path: Path) -> None:
    async def scenario() -> None:
        service, functions, _ = make(tmp_path, max_unfinished=2)
        await service.start("acme", "add", Call())
        await service.start("acme", "add", Call())
        with pytest.raises(AsyncCapacityExhaustedError) as caught:
            await service.start("acme", "add", Call())
        assert caught.value.retry_after_seconds == 1.0
        functions.release.set()
        await service.close(5.0)

    run(scenario)


def test_finished_invocations_expire_after_the_retention(tmp_path: Path) -> None:
    async def scenario() -> None:
        service, functions, clock = make(tmp_path, retention_seconds=60.0)
        functions.release.set()
        record = await service.start("acme", "add", Call())
        await settle(service, "acme", record.invocation_id)
        clock.now += 59 * SECOND
        assert (await service.get("acme", record.invocation_id)).finished
        clock.now += 2 * SECOND
        with pytest.raises(InvocationNotFoundError):
            await service.get("acme", record.invocation_id)
        assert await service.list_page("acme", "", 10) == []
        assert service._store.purge_expired(clock.now) == 1

    run(scenario)


def test_a_restart_keeps_finished_invocations_and_fails_unfinished_ones(tmp_path: Path) -> None:
    async def first_life() -> tuple[str, str]:
        service, functions, _ = make(tmp_path)
        functions.release.set()
        done = await service.start("acme", "add", Call())
        await settle(service, "acme", done.invocation_id)
        # a row as a gateway killed (-9) mid-call leaves it: RUNNING, never finished
        running = InvocationRecord(
            tenant="acme",
            invocation_id="f" * 32,
            function_id="add",
            export_name="add",
            state=RUNNING,
            request_id=None,
            create_time_ns=1,
        )
        service._store.insert(running)
        return done.invocation_id, running.invocation_id

    done_id, running_id = asyncio.run(first_life())

    async def second_life() -> None:
        service, _, _ = make(tmp_path)
        assert service.recover() == 1
        kept = await service.get("acme", done_id)
        assert kept.state == pb.INVOCATION_STATE_SUCCEEDED
        interrupted = await service.get("acme", running_id)
        error = pb.InvocationError.FromString(interrupted.error)
        assert interrupted.state == FAILED
        assert (error.code, error.reason) == (int(Code.ABORTED), "INVOCATION_INTERRUPTED")

    run(second_life)


def test_a_stop_past_the_grace_period_fails_running_invocations(tmp_path: Path) -> None:
    async def scenario() -> None:
        service, _, _ = make(tmp_path)
        record = await service.start("acme", "add", Call())
        await until_running(service, "acme", record.invocation_id)
        await service.close(0.05)
        stopped = await service.get("acme", record.invocation_id)
        assert stopped.state == FAILED
        assert pb.InvocationError.FromString(stopped.error).reason == "INVOCATION_INTERRUPTED"

    run(scenario)


class FakeContext:
    def __init__(self, tenant: str) -> None:
        self._metadata = ((TENANT_METADATA_KEY, tenant),)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


def test_servicer_lists_a_tenants_invocations_a_page_at_a_time(tmp_path: Path) -> None:
    async def scenario() -> None:
        service, functions, clock = make(tmp_path)
        functions.release.set()
        servicer = GatewayServicer(None, service)  # type: ignore[arg-type]
        names = []
        for _ in range(5):
            clock.now += 1
            started = await servicer.StartInvocation(
                pb.StartInvocationRequest(invocation=pb.InvokeRequest(name="functions/add")),
                FakeContext("acme"),  # type: ignore[arg-type]
            )
            names.append(started.invocation.name)
        await servicer.StartInvocation(
            pb.StartInvocationRequest(invocation=pb.InvokeRequest(name="functions/add")),
            FakeContext("beta"),  # type: ignore[arg-type]
        )
        seen: list[str] = []
        token = ""
        while True:
            page = await servicer.ListInvocations(
                pb.ListInvocationsRequest(page_size=2, page_token=token),
                FakeContext("acme"),  # type: ignore[arg-type]
            )
            seen += [i.name for i in page.invocations]
            assert len(page.invocations) <= 2
            token = page.next_page_token
            if not token:
                break
        assert seen == names
        got = await servicer.GetInvocation(
            pb.GetInvocationRequest(name=names[0]),
            FakeContext("acme"),  # type: ignore[arg-type]
        )
        assert got.invocation.function == "functions/add"
        with pytest.raises(InvocationNotFoundError):
            await servicer.GetInvocation(
                pb.GetInvocationRequest(name=names[0]),
                FakeContext("beta"),  # type: ignore[arg-type]
            )
        await service.close(5.0)

    run(scenario)


def replica(
    tmp_path: Path, clock: Clock, gateway_id: str
) -> tuple[InvocationService, FakeFunctions]:
    """A gateway process of its own (its own connections) on the shared database."""
    functions = FakeFunctions()
    service = InvocationService(
        functions,  # type: ignore[arg-type]
        InvocationStore(Registry(tmp_path / "registry.sqlite3")),
        encode_error=encode_invocation_error,
        retention_seconds=60.0,
        max_unfinished=100,
        lease_seconds=30.0,
        clock_ns=clock,
        gateway_id=gateway_id,
    )
    return service, functions


def interrupted(record: InvocationRecord) -> bool:
    error = pb.InvocationError.FromString(record.error)
    return record.state == FAILED and error.reason == "INVOCATION_INTERRUPTED"


def test_a_starting_gateway_leaves_a_live_gateways_invocations_alone(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = Clock()
        a, a_functions = replica(tmp_path, clock, "gw-a")
        assert a.recover() == 0
        record = await a.start("acme", "add", Call())
        assert record.owner == "gw-a"
        await until_running(a, "acme", record.invocation_id)
        b, _ = replica(tmp_path, clock, "gw-b")
        assert b.recover() == 0  # A's lease is live: its running invocation is not B's to fail
        b_again, _ = replica(tmp_path, clock, "gw-b2")  # B restarts under a new id
        assert b_again.recover() == 0
        assert (await b.get("acme", record.invocation_id)).state == RUNNING
        clock.now += 20 * SECOND
        a.renew_lease()  # A's heartbeat
        clock.now += 20 * SECOND  # 40 s since A started, 20 s since its last beat
        assert b.fail_orphaned() == 0
        assert (await b.get("acme", record.invocation_id)).state == RUNNING
        a_functions.release.set()
        done = await settle(a, "acme", record.invocation_id)
        assert done.state == pb.INVOCATION_STATE_SUCCEEDED
        assert a_functions.calls == 1

    run(scenario)


def test_a_dead_gateways_invocations_fail_once_its_lease_expires(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        clock = Clock()
        a, a_functions = replica(tmp_path, clock, "gw-a")
        a.recover()
        record = await a.start("acme", "add", Call())
        await until_running(a, "acme", record.invocation_id)
        b, b_functions = replica(tmp_path, clock, "gw-b")
        b.recover()
        clock.now += 29 * SECOND  # A stops beating (killed, or stalled)
        b.renew_lease()
        assert b.fail_orphaned() == 0
        assert set(b._store.leases()) == {"gw-a", "gw-b"}
        clock.now += 2 * SECOND  # A's lease (30 s) has expired; B's (renewed) has not
        assert b.fail_orphaned() == 1
        failed = await b.get("acme", record.invocation_id)
        assert interrupted(failed)
        assert failed.end_time_ns == clock.now
        assert set(b._store.leases()) == {"gw-b"}  # the expired lease is forgotten
        assert b_functions.calls == 0  # failed, never re-run
        # A was only stalled: its late result does not change the recorded failure
        a_functions.release.set()
        await until_jobs_done(a)
        assert interrupted(await a.get("acme", record.invocation_id))
        with caplog.at_level("WARNING"):
            a.renew_lease()
        assert "lease had expired" in caplog.text
        assert set(a._store.leases()) == {"gw-a", "gw-b"}

    run(scenario)


def test_a_restarted_gateway_fails_its_previous_incarnations_rows_after_the_lease(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        clock = Clock()
        first, _ = replica(tmp_path, clock, "gw-1")
        first.recover()
        record = await first.start("acme", "add", Call())
        await until_running(first, "acme", record.invocation_id)
        # killed -9: no close; the same gateway starts again under a new id
        clock.now += 5 * SECOND
        second, second_functions = replica(tmp_path, clock, "gw-2")
        assert second.recover() == 0  # gw-1's lease still runs for 25 s
        clock.now += 26 * SECOND
        second.renew_lease()
        assert second.fail_orphaned() == 1
        assert interrupted(await second.get("acme", record.invocation_id))
        assert second_functions.calls == 0

    run(scenario)


def test_a_clean_stop_fails_only_its_own_rows_and_releases_its_lease(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = Clock()
        a, _ = replica(tmp_path, clock, "gw-a")
        b, b_functions = replica(tmp_path, clock, "gw-b")
        a.recover()
        b.recover()
        mine = await a.start("acme", "add", Call())
        theirs = await b.start("acme", "add", Call())
        await until_running(a, "acme", mine.invocation_id)
        await until_running(b, "acme", theirs.invocation_id)
        await a.close(0.05)
        assert interrupted(await b.get("acme", mine.invocation_id))
        assert (await b.get("acme", theirs.invocation_id)).state == RUNNING
        assert set(b._store.leases()) == {"gw-b"}
        b_functions.release.set()
        assert (await settle(b, "acme", theirs.invocation_id)).state == (
            pb.INVOCATION_STATE_SUCCEEDED
        )

    run(scenario)


def test_the_heartbeat_renews_the_lease_and_fails_orphans(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = Clock()
        dead, _ = replica(tmp_path, clock, "gw-dead")
        dead.recover()
        record = await dead.start("acme", "add", Call())
        await until_running(dead, "acme", record.invocation_id)
        live, _ = replica(tmp_path, clock, "gw-live")
        live.recover()
        live.start_heartbeat(0.01)
        clock.now += 31 * SECOND
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            if interrupted(await live.get("acme", record.invocation_id)):
                break
            await asyncio.sleep(0.01)
        assert interrupted(await live.get("acme", record.invocation_id))
        assert live._store.leases() == {"gw-live": clock.now + 30 * SECOND}
        await live.close(0.05)
        assert live._store.leases() == {}

    run(scenario)


def test_an_old_database_gains_the_owner_column(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "registry.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        """CREATE TABLE invocations (tenant TEXT NOT NULL, invocation_id TEXT NOT NULL,
        function_id TEXT NOT NULL, export_name TEXT NOT NULL, state INTEGER NOT NULL,
        request_id TEXT, outcome BLOB NOT NULL DEFAULT x'', error BLOB NOT NULL DEFAULT x'',
        create_time_ns INTEGER NOT NULL, end_time_ns INTEGER, expire_time_ns INTEGER,
        PRIMARY KEY (tenant, invocation_id)) WITHOUT ROWID;"""
    )
    db.execute(
        "INSERT INTO invocations (tenant, invocation_id, function_id, export_name, state, "
        "create_time_ns) VALUES ('acme', ?, 'add', 'add', ?, 1)",
        ("a" * 32, RUNNING),
    )
    db.commit()
    db.close()

    async def scenario() -> None:
        service, _ = replica(tmp_path, Clock(), "gw-new")
        old = await service.get("acme", "a" * 32)
        assert (old.owner, old.state) == ("", RUNNING)
        assert service.recover() == 1  # a row from before owners holds no lease
        assert interrupted(await service.get("acme", "a" * 32))

    run(scenario)


def test_the_sweeper_survives_a_database_outage(tmp_path: Path) -> None:
    from tensorwasm_common.database import DatabaseUnavailableError

    async def scenario() -> None:
        service, _, _ = make(tmp_path)
        purge = service._store.purge_expired
        calls: list[int] = []

        def flaky_purge(now_ns: int) -> int:
            calls.append(now_ns)
            if len(calls) == 1:
                raise DatabaseUnavailableError("the database is away", engine="postgresql")
            return purge(now_ns)

        service._store.purge_expired = flaky_purge  # type: ignore[method-assign]
        service.start_sweeping(0.01)
        deadline = time.monotonic() + WAIT_SECONDS
        while len(calls) < 3:
            assert time.monotonic() < deadline, "the sweeper stopped after the outage"
            await asyncio.sleep(0.01)
        await service.close(1.0)

    run(scenario)
