"""Async invocations and gateway leases, the same contract on SQLite and PostgreSQL; and,
on PostgreSQL, lease times on the database's clock whatever the gateways' clocks say."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest
from tensorwasm_common.database import Engine, parse_database_url
from tensorwasm_gateway.errors import InvocationNotFoundError
from tensorwasm_gateway.functions import Registry
from tensorwasm_gateway.invocations import InvocationRecord, InvocationStore
from tensorwasm_gateway.invocations.store import FAILED, PENDING, RUNNING, SUCCEEDED, finished
from tensorwasm_gateway.state import open_database
from tensorwasm_gateway.state.open import SETTING

NOW = 1_800_000_000_000_000_000
SECOND = 1_000_000_000
HOUR = 3600 * SECOND


def _pending(
    invocation_id: str, owner: str = "gw-a", request_id: str | None = None
) -> InvocationRecord:
    return InvocationRecord("t", invocation_id, "fn", "add", PENDING, request_id, NOW, owner=owner)


@pytest.fixture
def store(registry: Registry) -> Iterator[InvocationStore]:
    store = InvocationStore(registry)
    yield store
    store.close()


def test_lifecycle_and_request_id_dedup(store: InvocationStore) -> None:
    first = store.insert(_pending("0001", request_id="req-1"))
    again = store.insert(_pending("0002", request_id="req-1"))
    assert again == first  # the same request id returns the first invocation
    store.set_running("t", "0001")
    assert store.get("t", "0001", NOW).state == RUNNING
    done = finished(
        first, SUCCEEDED, outcome=b"\x01\x02", end_time_ns=NOW + SECOND, retention_ns=HOUR
    )
    store.finish(done)
    store.finish(
        finished(first, FAILED, error=b"late", end_time_ns=NOW + 2 * SECOND, retention_ns=HOUR)
    )
    assert store.get("t", "0001", NOW) == replace(done, owner="gw-a")  # finished never changes
    assert [r.invocation_id for r in store.list_page("t", "", 10, NOW)] == ["0001"]
    with pytest.raises(InvocationNotFoundError):
        store.get("t", "0001", NOW + 2 * HOUR)  # past its expiry
    assert store.purge_expired(NOW + 2 * HOUR) == 1
    assert store.by_request_id("t", "req-1") is None


def test_orphans_of_an_expired_lease_fail_but_a_renewed_lease_keeps_its_work(
    store: InvocationStore, registry: Registry, open_registry: Callable[[], Registry]
) -> None:
    gateway_a = InvocationStore(open_registry())  # gateway A's view; `store` is B's
    now = _lease_now(registry)
    assert not gateway_a.renew_lease("gw-a", now, 10 * SECOND)  # first heartbeat
    assert gateway_a.renew_lease("gw-a", now, 10 * SECOND)
    gateway_a.insert(_pending("000a", owner="gw-a"))
    gateway_a.insert(_pending("000b", owner="gw-gone"))  # an owner without a lease
    assert store.fail_orphaned("gw-b", {}, b"interrupted", NOW, NOW + HOUR) == 1
    assert store.get("t", "000a", NOW).state == PENDING
    assert store.get("t", "000b", NOW).state == FAILED

    expired = {"gw-a": 2}  # as if read when the lease had expired, renewed twice by then
    assert gateway_a.renew_lease("gw-a", now, 10 * SECOND)  # a late renewal wins the CAS
    assert store.fail_orphaned("gw-b", expired, b"interrupted", NOW, NOW + HOUR) == 0
    assert store.get("t", "000a", NOW).state == PENDING
    gateway_a.close()  # A dies: its sessions end (its liveness lock on PostgreSQL)
    # The server frees a closed session's lock when its backend has ended, which a loaded
    # machine may take a moment to do: until then A still counts as alive.
    deadline = time.monotonic() + 30.0
    while store.fail_orphaned("gw-b", {"gw-a": 3}, b"interrupted", NOW, NOW + HOUR) == 0:
        assert time.monotonic() < deadline, "a dead gateway's work was never failed"
        time.sleep(0.02)
    assert store.get("t", "000a", NOW).error == b"interrupted"
    assert "gw-a" not in store.leases()


def test_fail_owned_and_release(store: InvocationStore, registry: Registry) -> None:
    store.renew_lease("gw-a", _lease_now(registry), 10 * SECOND)
    store.insert(_pending("000c"))
    assert store.fail_owned("gw-a", b"stopped", NOW, NOW + HOUR) == 1
    store.release_lease("gw-a")
    assert store.leases() == {}


def test_postgres_slow_heartbeats_do_not_fail_a_live_gateways_work(postgres_url: str) -> None:
    url = parse_database_url(postgres_url, SETTING)
    registries = [Registry(open_database(url)) for _ in range(2)]
    gateway_a, gateway_b = (InvocationStore(r) for r in registries)
    try:
        gateway_a.renew_lease("gw-a", 0, 1)  # a lease of 1 ns: expired at once
        gateway_a.insert(_pending("000e", owner="gw-a"))
        expired = gateway_b.expired_leases(0)
        assert set(expired) == {"gw-a"}
        assert gateway_b.fail_orphaned("gw-b", expired, b"x", NOW, NOW + HOUR) == 0
        assert gateway_b.get("t", "000e", NOW).state == PENDING  # A's session is alive
        gateway_a.close()  # A dies; the server frees its lock as the session ends
        deadline = time.monotonic() + 30.0
        while (
            gateway_b.fail_orphaned("gw-b", gateway_b.expired_leases(0), b"x", NOW, NOW + HOUR) == 0
        ):
            assert time.monotonic() < deadline, "a dead gateway's work was never failed"
            time.sleep(0.02)  # the next heartbeat's sweep
        assert gateway_b.get("t", "000e", NOW).state == FAILED
    finally:
        gateway_b.close()
        for registry in registries:
            registry.close()


def test_postgres_leases_use_the_database_clock(postgres_url: str) -> None:
    registry = Registry(open_database(parse_database_url(postgres_url, SETTING)))
    store = InvocationStore(registry)
    try:
        _skewed_clocks_fail_nothing(store)
    finally:
        store.close()
        registry.close()


def _skewed_clocks_fail_nothing(store: InvocationStore) -> None:
    # Gateway A's clock is an hour slow, B's an hour fast: on host clocks B would read A's
    # fresh lease as long expired and fail A's live work.
    store.renew_lease("gw-a", NOW - HOUR, 30 * SECOND)
    store.insert(_pending("000d", owner="gw-a"))
    assert store.expired_leases(NOW + HOUR) == {}
    assert store.fail_orphaned("gw-b", store.expired_leases(NOW + HOUR), b"x", NOW, NOW + HOUR) == 0
    assert store.get("t", "000d", NOW).state == PENDING
    assert store.renew_lease("gw-a", NOW - 2 * HOUR, 30 * SECOND)  # still held, by the db's clock


def _lease_now(registry: Registry) -> int:
    """A `now_ns` the engine's lease clock agrees with (PostgreSQL ignores it)."""
    if registry.database.engine is Engine.POSTGRESQL:
        return 0
    return NOW
