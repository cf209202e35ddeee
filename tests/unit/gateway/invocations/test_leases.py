"""Gateway leases on a real SQLite file: live work is never failed because its owner was
slow (a late renewal wins over a taker that read the lease as expired; the heartbeat
renews even while the event loop is blocked)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tensorwasm_gateway.functions.registry import Registry
from tensorwasm_gateway.invocations.service import InvocationService
from tensorwasm_gateway.invocations.store import (
    FAILED,
    RUNNING,
    InvocationRecord,
    InvocationStore,
)
from tensorwasm_gateway.wire import encode_invocation_error

SECOND = 1_000_000_000
LEASE_NS = 3 * SECOND


def process_store(tmp_path: Path) -> InvocationStore:
    """The store as one gateway process holds it: its own connections to the file."""
    return InvocationStore(Registry(tmp_path / "registry.sqlite3"))


def running(owner: str) -> InvocationRecord:
    return InvocationRecord(
        tenant="acme",
        invocation_id="a" * 32,
        function_id="add",
        export_name="add",
        state=RUNNING,
        request_id=None,
        create_time_ns=1,
        owner=owner,
    )


def test_a_renewal_after_the_takers_read_keeps_the_owners_work_alive(tmp_path: Path) -> None:
    owner, taker = process_store(tmp_path), process_store(tmp_path)
    owner.renew_lease("gw-a", 0, LEASE_NS)
    job = owner.insert(running("gw-a"))

    # the taker reads A's lease as expired (A's heartbeat is late) ...
    expired = taker.expired_leases(10 * SECOND)
    assert set(expired) == {"gw-a"}
    # ... A's late heartbeat lands before the taker's transaction ...
    owner.renew_lease("gw-a", 10 * SECOND, LEASE_NS)
    # ... so the taker's transaction fails nothing and keeps A's lease
    assert taker.fail_orphaned("gw-b", expired, b"", 10 * SECOND, 70 * SECOND) == 0
    assert taker.get("acme", job.invocation_id, 10 * SECOND).state == RUNNING
    assert set(taker.leases()) == {"gw-a"}

    # once A really stops renewing, its work is failed (the check is not a no-op)
    assert taker.expired_leases(11 * SECOND) == {}
    expired = taker.expired_leases(14 * SECOND)
    assert taker.fail_orphaned("gw-b", expired, b"", 14 * SECOND, 74 * SECOND) == 1
    assert taker.get("acme", job.invocation_id, 14 * SECOND).state == FAILED
    assert taker.leases() == {}


def test_work_without_any_lease_is_failed_at_once(tmp_path: Path) -> None:
    taker = process_store(tmp_path)
    job = taker.insert(running(""))  # a row from before owners were recorded
    assert taker.fail_orphaned("gw-b", {}, b"", 5 * SECOND, 65 * SECOND) == 1
    assert taker.get("acme", job.invocation_id, 5 * SECOND).state == FAILED


def test_the_heartbeat_renews_the_lease_while_the_event_loop_is_blocked(tmp_path: Path) -> None:
    service = InvocationService(
        None,  # type: ignore[arg-type]  (no invocation is started)
        process_store(tmp_path),
        encode_error=encode_invocation_error,
        retention_seconds=60.0,
        max_unfinished=1,
        lease_seconds=30.0,
        gateway_id="gw-a",
    )
    observer = process_store(tmp_path)
    service.recover()
    first = observer.leases()["gw-a"]

    async def scenario() -> None:
        service.start_heartbeat(0.02)
        # a loaded process: the event loop does not get to run for a while
        deadline = time.monotonic() + 60
        while observer.leases()["gw-a"] == first:
            assert time.monotonic() < deadline, "the lease was not renewed"
            time.sleep(0.01)  # noqa: ASYNC251 (blocks the loop on purpose)
        await service.close(1.0)

    asyncio.run(scenario())
