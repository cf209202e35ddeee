"""The function and instance registry's contract, the same on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from tensorwasm_common.database import Engine
from tensorwasm_common.errors import InstanceNotFoundError
from tensorwasm_gateway.errors import FunctionAlreadyExistsError, FunctionNotFoundError
from tensorwasm_gateway.functions import ExportRecord, FunctionRecord, InstanceRecord, Registry

DEADLINE_SECONDS = 30.0


def _function(function_id: str, digest: str = "ab" * 32, tenant: str = "t") -> FunctionRecord:
    exports = (ExportRecord("add", ("i32", "i32"), ("i32",)),)
    return FunctionRecord(
        tenant, function_id, digest, 123, exports, 1_700_000_000_000_000_001, b"\x00cfg"
    )


def _lookup_or_load(registry: Registry, tenant: str, function_id: str) -> FunctionRecord:
    return registry.lookup(tenant, function_id) or registry.load(tenant, function_id)


def test_functions_round_trip_and_list_by_tenant(registry: Registry) -> None:
    for function_id in ("b", "a", "c"):
        registry.insert(_function(function_id))
    registry.insert(_function("a", tenant="other"))
    assert registry.get("t", "a") == _function("a")
    assert [f.function_id for f in registry.list_page("t", "", 10)] == ["a", "b", "c"]
    assert [f.function_id for f in registry.list_page("t", "a", 1)] == ["b"]
    assert registry.exists("other", "a")
    assert not registry.exists("other", "b")
    with pytest.raises(FunctionAlreadyExistsError):
        registry.insert(_function("a"))


def test_delete_and_uses_module(registry: Registry) -> None:
    registry.insert(_function("f", digest="cd" * 32))
    assert registry.uses_module("cd" * 32)
    registry.delete("t", "f")
    assert not registry.uses_module("cd" * 32)
    with pytest.raises(FunctionNotFoundError):
        registry.get("t", "f")
    with pytest.raises(FunctionNotFoundError):
        registry.delete("t", "f")


def test_lookup_answers_after_load_and_forgets_a_delete(registry: Registry) -> None:
    registry.insert(_function("f"))
    assert _lookup_or_load(registry, "t", "f") == _function("f")
    assert registry.lookup("t", "f") == _function("f")  # now without a database read
    registry.delete("t", "f")
    if registry.database.engine is Engine.SQLITE:
        with pytest.raises(FunctionNotFoundError):
            registry.lookup("t", "f")
    else:
        assert registry.lookup("t", "f") is None
        with pytest.raises(FunctionNotFoundError):
            registry.load("t", "f")


def test_a_delete_through_another_gateway_reaches_this_ones_lookup(
    registry: Registry, open_registry: Callable[[], Registry]
) -> None:
    other = open_registry()
    registry.insert(_function("f", digest="01" * 32))
    assert _lookup_or_load(registry, "t", "f").module_digest == "01" * 32
    other.delete("t", "f")
    other.insert(_function("f", digest="02" * 32))  # redeployed with another module
    deadline = time.monotonic() + DEADLINE_SECONDS
    while _lookup_or_load(registry, "t", "f").module_digest != "02" * 32:
        assert time.monotonic() < deadline, "the redeploy never reached the other gateway"
        time.sleep(0.01)


def test_instances_round_trip(registry: Registry) -> None:
    record = InstanceRecord("t", "i1", "f", "ab" * 32, "127.0.0.1:1", 5_000_000_000, 42)
    registry.insert_instance(record)
    assert registry.get_instance("t", "i1") == record
    with pytest.raises(InstanceNotFoundError):
        registry.get_instance("other", "i1")
    assert registry.delete_instance("t", "i1")
    assert not registry.delete_instance("t", "i1")


def test_lookup_instance_is_get_instance_where_it_answers(registry: Registry) -> None:
    """Inline on SQLite (remembered while the file is unchanged), None on PostgreSQL
    (the caller reads with get_instance): never a record the row no longer holds."""
    record = InstanceRecord("t", "i2", "f", "ab" * 32, "127.0.0.1:1", 5_000_000_000, 42)
    registry.insert_instance(record)
    found = registry.lookup_instance("t", "i2")
    if registry.database.engine is Engine.POSTGRESQL:
        assert found is None
        return
    assert found == record
    assert registry.lookup_instance("t", "i2") is found  # decoded once per row
    with pytest.raises(InstanceNotFoundError):
        registry.lookup_instance("other", "i2")
    registry.delete_instance("t", "i2")
    with pytest.raises(InstanceNotFoundError):
        registry.lookup_instance("t", "i2")
    moved = InstanceRecord("t", "i2", "f", "ab" * 32, "127.0.0.1:2", 5_000_000_000, 43)
    registry.insert_instance(moved)
    assert registry.lookup_instance("t", "i2") == moved
