"""Unit tests for tensorwasm_gateway.functions.registry on a real SQLite file."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tensorwasm_common.errors import Code, InstanceNotFoundError
from tensorwasm_gateway.errors import FunctionAlreadyExistsError, FunctionNotFoundError
from tensorwasm_gateway.functions.registry import (
    ExportRecord,
    FunctionRecord,
    InstanceRecord,
    Registry,
    now_ns,
)

DIGEST = "ab" * 32


def _record(
    function_id: str,
    tenant: str = "default",
    *,
    digest: str = DIGEST,
    size: int = 100,
    exports: tuple[ExportRecord, ...] = (ExportRecord("add", ("i32", "i32"), ("i32",)),),
    created: int = 1_700_000_000_000_000_000,
) -> FunctionRecord:
    return FunctionRecord(tenant, function_id, digest, size, exports, created)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path / "gateway" / "registry.sqlite3")
    yield reg
    reg.close()


def test_insert_then_get_round_trips_every_field(registry: Registry) -> None:
    record = _record(
        "adder",
        exports=(
            ExportRecord("add", ("i32", "i32"), ("i32",)),
            ExportRecord("_start", (), ()),
            ExportRecord("pair", ("f64",), ("f32", "v128")),
        ),
        size=12345,
        created=1_234_567_890_123_456_789,
    )
    registry.insert(record)
    loaded = registry.get("default", "adder")
    assert loaded == record
    assert isinstance(loaded.exports, tuple)
    assert isinstance(loaded.exports[0].params, tuple)
    assert loaded.exports[2] == ExportRecord("pair", ("f64",), ("f32", "v128"))


def test_creates_parent_directories_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "registry.sqlite3"
    reg = Registry(path)
    reg.check()
    reg.close()
    assert path.exists()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_rows_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite3"
    first = Registry(path)
    first.insert(_record("kept"))
    first.insert(_record("removed"))
    first.delete("default", "removed")
    first.close()

    second = Registry(path)
    try:
        assert second.get("default", "kept") == _record("kept")
        assert not second.exists("default", "removed")
        assert [r.function_id for r in second.list_page("default", "", 10)] == ["kept"]
    finally:
        second.close()


def test_duplicate_insert_raises_already_exists(registry: Registry) -> None:
    registry.insert(_record("dup", digest="11" * 32))
    with pytest.raises(FunctionAlreadyExistsError) as caught:
        registry.insert(_record("dup", digest="22" * 32))
    error = caught.value
    assert error.code is Code.ALREADY_EXISTS
    assert error.reason == "FUNCTION_ALREADY_EXISTS"
    assert error.metadata == {"function_id": "dup"}
    assert registry.get("default", "dup").module_digest == "11" * 32  # first row unchanged


def test_get_missing_raises_not_found(registry: Registry) -> None:
    with pytest.raises(FunctionNotFoundError) as caught:
        registry.get("default", "ghost")
    assert caught.value.code is Code.NOT_FOUND
    assert caught.value.reason == "FUNCTION_NOT_FOUND"
    assert caught.value.metadata == {"function_id": "ghost"}


def test_delete_removes_and_missing_delete_raises(registry: Registry) -> None:
    registry.insert(_record("gone"))
    assert registry.exists("default", "gone")
    registry.delete("default", "gone")
    assert not registry.exists("default", "gone")
    with pytest.raises(FunctionNotFoundError) as caught:
        registry.delete("default", "gone")
    assert caught.value.reason == "FUNCTION_NOT_FOUND"
    assert caught.value.metadata == {"function_id": "gone"}
    # The id can be reused after deletion.
    registry.insert(_record("gone", digest="cd" * 32))
    assert registry.get("default", "gone").module_digest == "cd" * 32


def test_tenants_are_isolated(registry: Registry) -> None:
    registry.insert(_record("shared", tenant="acme", digest="aa" * 32))
    registry.insert(_record("shared", tenant="globex", digest="bb" * 32))
    registry.insert(_record("only-acme", tenant="acme"))

    assert registry.get("acme", "shared").module_digest == "aa" * 32
    assert registry.get("globex", "shared").module_digest == "bb" * 32
    assert registry.exists("acme", "only-acme")
    assert not registry.exists("globex", "only-acme")
    with pytest.raises(FunctionNotFoundError):
        registry.get("globex", "only-acme")
    with pytest.raises(FunctionNotFoundError):
        registry.delete("globex", "only-acme")
    assert registry.exists("acme", "only-acme")  # the failed delete touched nothing

    assert [r.function_id for r in registry.list_page("acme", "", 10)] == ["only-acme", "shared"]
    assert [r.function_id for r in registry.list_page("globex", "", 10)] == ["shared"]
    assert registry.list_page("initech", "", 10) == []

    registry.delete("acme", "shared")
    assert registry.exists("globex", "shared")


def test_list_page_orders_by_id_and_pages_with_after(registry: Registry) -> None:
    ids = [f"fn-{i:03d}" for i in range(25)]
    shuffled = ids[:]
    random.Random(7).shuffle(shuffled)
    for function_id in shuffled:
        registry.insert(_record(function_id))

    pages: list[list[str]] = []
    after = ""
    while True:
        page = registry.list_page("default", after, 10)
        if not page:
            break
        pages.append([r.function_id for r in page])
        after = page[-1].function_id
    assert pages == [ids[0:10], ids[10:20], ids[20:25]]


def test_list_page_after_is_exclusive_and_needs_no_existing_row(registry: Registry) -> None:
    for function_id in ("b", "d", "f"):
        registry.insert(_record(function_id))
    assert [r.function_id for r in registry.list_page("default", "b", 10)] == ["d", "f"]
    assert [r.function_id for r in registry.list_page("default", "c", 10)] == ["d", "f"]
    assert [r.function_id for r in registry.list_page("default", "a", 1)] == ["b"]
    assert registry.list_page("default", "f", 10) == []


def test_concurrent_inserts_from_threads(registry: Registry) -> None:
    errors: list[BaseException] = []

    def worker(start: int) -> None:
        try:
            for i in range(start, start + 20):
                registry.insert(_record(f"t-{i:03d}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n * 20,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(registry.list_page("default", "", 1000)) == 80


def test_now_ns_is_nanoseconds() -> None:
    value = now_ns()
    assert isinstance(value, int)
    assert value > 1_600_000_000 * 10**9  # after 2020, in nanoseconds


def test_lookup_reads_what_the_writer_committed(registry: Registry) -> None:
    with pytest.raises(FunctionNotFoundError):
        registry.lookup("acme", "late")
    registry.insert(_record("late", "acme"))
    assert registry.lookup("acme", "late") == registry.get("acme", "late")
    registry.delete("acme", "late")
    with pytest.raises(FunctionNotFoundError):
        registry.lookup("acme", "late")


def test_lookup_gives_the_same_record_until_the_row_changes(registry: Registry) -> None:
    registry.insert(_record("adder"))
    first = registry.lookup("default", "adder")
    assert first is not None
    assert registry.lookup("default", "adder") is first  # decoded once per row
    registry.delete("default", "adder")
    with pytest.raises(FunctionNotFoundError):
        registry.lookup("default", "adder")
    registry.insert(_record("adder", digest="cd" * 32))
    redeployed = registry.lookup("default", "adder")
    assert redeployed is not None
    assert redeployed.module_digest == "cd" * 32
    registry.insert(_record("adder", tenant="other"))
    assert registry.lookup("other", "adder") == _record("adder", tenant="other")


def test_lookup_sees_what_other_connections_commit(tmp_path: Path) -> None:
    """Another gateway process on the same file: its deletes, redeploys and any change to
    a row are seen by the next lookup, never a record kept from before."""
    path = tmp_path / "registry.sqlite3"
    mine, other = Registry(path), Registry(path)
    try:
        other.insert(_record("adder"))
        first = mine.lookup("default", "adder")
        assert first is not None and first.module_digest == DIGEST
        other.delete("default", "adder")
        with pytest.raises(FunctionNotFoundError):
            mine.lookup("default", "adder")
        other.insert(_record("adder", digest="cd" * 32))
        redeployed = mine.lookup("default", "adder")
        assert redeployed is not None and redeployed.module_digest == "cd" * 32
        with contextlib.closing(sqlite3.connect(path)) as raw, raw:
            raw.execute("UPDATE functions SET module_size_bytes = 7 WHERE function_id = 'adder'")
        changed = mine.lookup("default", "adder")
        assert changed is not None and changed.module_size_bytes == 7
    finally:
        mine.close()
        other.close()


def test_lookup_instance_sees_what_other_connections_commit(tmp_path: Path) -> None:
    """Another gateway process on the same file: an instance it forgot or moved to
    another executor is seen so by the next lookup, never the row kept from before."""
    path = tmp_path / "registry.sqlite3"
    mine, other = Registry(path), Registry(path)
    record = InstanceRecord("t", "i1", "f", DIGEST, "127.0.0.1:1", 5_000_000_000, 42)
    try:
        other.insert_instance(record)
        assert mine.lookup_instance("t", "i1") == record
        with contextlib.closing(sqlite3.connect(path)) as raw, raw:
            raw.execute("UPDATE instances SET executor = '127.0.0.1:2' WHERE instance_id = 'i1'")
        moved = mine.lookup_instance("t", "i1")
        assert moved is not None and moved.executor == "127.0.0.1:2"
        other.delete_instance("t", "i1")
        with pytest.raises(InstanceNotFoundError):
            mine.lookup_instance("t", "i1")
    finally:
        mine.close()
        other.close()
