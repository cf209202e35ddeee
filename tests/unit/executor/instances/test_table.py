"""The live-instance table: caps, ownership, the idle TTL (with an injected clock)."""

from __future__ import annotations

from typing import Any

import pytest
from tensorwasm_common.errors import AlreadyExistsError, Code, InstanceNotFoundError
from tensorwasm_executor.errors import InstanceCapacityExhaustedError, TenantCapacityExhaustedError
from tensorwasm_executor.instances.table import InstanceTable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


RESIDENT: Any = object()  # the table never calls into it


def test_ids_are_unique_and_owned() -> None:
    table = InstanceTable(max_instances=10, max_per_tenant=10)
    a = table.reserve("acme").commit(RESIDENT, "d" * 64, 60.0)
    b = table.reserve("acme").commit(RESIDENT, "d" * 64, 60.0)
    assert a.id != b.id and len(a.id) == 32
    assert table.checkout(a.id, "acme") is a
    with pytest.raises(InstanceNotFoundError) as caught:
        table.checkout(a.id, "globex")  # another tenant's id looks missing
    assert (caught.value.code, caught.value.reason) == (Code.NOT_FOUND, "INSTANCE_NOT_FOUND")
    with pytest.raises(InstanceNotFoundError):
        table.remove(a.id, "globex")
    assert table.remove(a.id, "acme") is a
    with pytest.raises(InstanceNotFoundError):
        table.checkout(a.id, "acme")


def test_per_tenant_cap_does_not_block_others() -> None:
    table = InstanceTable(max_instances=10, max_per_tenant=2)
    live = [table.reserve("acme").commit(RESIDENT, "d" * 64, 60.0) for _ in range(2)]
    with pytest.raises(TenantCapacityExhaustedError) as caught:
        table.reserve("acme")
    assert caught.value.code == Code.RESOURCE_EXHAUSTED
    table.reserve("globex").release()
    table.remove(live[0].id, "acme")  # deleting frees a slot
    table.reserve("acme").release()


def test_executor_cap_and_failed_creation_rolls_back() -> None:
    table = InstanceTable(max_instances=2, max_per_tenant=5)
    held = table.reserve("acme")
    table.reserve("globex").commit(RESIDENT, "d" * 64, 60.0)
    with pytest.raises(InstanceCapacityExhaustedError) as caught:
        table.reserve("initech")
    assert caught.value.reason == "INSTANCE_CAPACITY_EXHAUSTED"
    held.release()
    held.release()  # idempotent
    assert table.tenant_count("acme") == 0
    table.reserve("initech")


def test_idle_instances_expire_but_busy_ones_do_not() -> None:
    clock = Clock()
    table = InstanceTable(max_instances=10, max_per_tenant=10, clock=clock)
    idle = table.reserve("acme").commit(RESIDENT, "d" * 64, 10.0)
    busy = table.reserve("acme").commit(RESIDENT, "d" * 64, 10.0)
    fresh = table.reserve("acme").commit(RESIDENT, "d" * 64, 30.0)
    table.checkout(busy.id, "acme")
    clock.now += 9.9
    assert table.expire() == []
    clock.now += 0.1
    assert table.expire() == [idle]
    assert len(table) == 2 and table.tenant_count("acme") == 2
    table.checkin(busy)  # idle time restarts at check-in
    clock.now += 9.0
    assert table.expire() == []
    clock.now += 1.0
    assert table.expire() == [busy]
    clock.now += 20.0
    assert table.expire() == [fresh]


def test_drain_returns_everything() -> None:
    table = InstanceTable(max_instances=10, max_per_tenant=10)
    made = {table.reserve(t).commit(RESIDENT, "d" * 64, 1.0).id for t in ("a", "b")}
    assert {live.id for live in table.drain()} == made
    assert len(table) == 0 and table.tenant_count("a") == 0


def test_a_restored_instance_keeps_its_id_once() -> None:
    table = InstanceTable(max_instances=10, max_per_tenant=10)
    live = table.reserve("acme").commit(RESIDENT, "d" * 64, 60.0, instance_id="a" * 32)
    assert live.id == "a" * 32
    with pytest.raises(AlreadyExistsError):
        table.reserve("acme").commit(RESIDENT, "d" * 64, 60.0, instance_id="a" * 32)
    assert table.tenant_count("acme") == 1  # the refused one holds no slot


def test_checkpoints_are_due_when_idle_changed_and_old_enough() -> None:
    clock = Clock()
    table = InstanceTable(max_instances=10, max_per_tenant=10, clock=clock)
    live = table.reserve("acme").commit(RESIDENT, "d" * 64, 600.0, checkpoint_seconds=5)
    never = table.reserve("acme").commit(RESIDENT, "d" * 64, 600.0)  # not checkpointed
    clock.now += 10
    assert table.due_checkpoints() == []  # unchanged since it started
    table.checkin(table.checkout(live.id, "acme"))
    table.checkin(table.checkout(never.id, "acme"))
    held = table.checkout(live.id, "acme")
    assert table.due_checkpoints() == []  # a call is running on it
    table.checkin(held)
    assert table.due_checkpoints() == [live]
    assert table.due_checkpoints() == []  # taken already: marked busy until done
    assert table.expire() == []  # a checkpoint in progress keeps it alive
    table.checkpointed(live, live.calls)
    assert table.due_checkpoints() == []  # no call since, and not 5 s yet
    table.checkin(table.checkout(live.id, "acme"))
    assert table.due_checkpoints() == []
    clock.now += 5
    due = table.due_checkpoints()
    assert due == [live]
    table.checkpointed(live, None)  # it failed: it stays due at its next period
    clock.now += 5
    assert table.due_checkpoints() == [live]
