"""cap_watch: grows routed through counting wrappers, the module otherwise unchanged."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import wasmtime
from tensorwasm_executor.wasm import cap_watch
from tensorwasm_executor.wasm.binary import split_sections

PAGE = 64 << 10


def engine() -> wasmtime.Engine:
    config = wasmtime.Config()
    config.wasm_multi_memory = True
    config.wasm_memory64 = True
    config.wasm_tail_call = True
    config.wasm_simd = True
    config.wasm_bulk_memory = True
    config.wasm_reference_types = True
    return wasmtime.Engine(config)


def instantiate(
    wat: str, *, memory_bytes: int = 4 * PAGE, table_elements: int = 10
) -> tuple[wasmtime.Store, Any, bytes]:
    wasm = bytes(wasmtime.wat2wasm(wat))
    rewritten = cap_watch.instrument(wasm)
    assert rewritten is not None
    eng = engine()
    store = wasmtime.Store(eng)
    store.set_limits(memory_size=memory_bytes, table_elements=table_elements)
    instance = wasmtime.Instance(store, wasmtime.Module(eng, rewritten), [])
    return store, instance.exports(store), rewritten


def counter(store: wasmtime.Store, exports: Any, name: str) -> int:
    value: int = exports[name].value(store)
    return value


GROW = """
(module
  (memory (export "memory") 1 {maximum})
  (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))
"""


def test_a_grow_refused_by_the_cap_is_counted_and_the_guest_sees_the_same_results() -> None:
    store, exports, _ = instantiate(GROW.format(maximum=""), memory_bytes=4 * PAGE)
    grow: Callable[..., int] = exports["grow"]
    assert grow(store, 2) == 1  # 3 pages of the cap's 4
    assert counter(store, exports, cap_watch.MEMORY_COUNTER) == 0
    assert grow(store, 2) == -1  # 5 pages: past the cap
    assert grow(store, 65533) == -1  # 4 GiB in all: allowed by wasm, refused by the cap
    assert counter(store, exports, cap_watch.MEMORY_COUNTER) == 2
    assert grow(store, 70000) == -1  # past 4 GiB: no 32-bit memory grows there, cap or not
    assert counter(store, exports, cap_watch.MEMORY_COUNTER) == 2
    assert grow(store, 1) == 3  # the memory is intact and still grows to the cap
    assert exports["memory"].size(store) == 4


def test_a_grow_past_the_modules_own_maximum_is_not_the_caps_doing() -> None:
    store, exports, _ = instantiate(GROW.format(maximum="3"), memory_bytes=100 * PAGE)
    assert exports["grow"](store, 5) == -1  # 6 pages > the declared 3
    assert counter(store, exports, cap_watch.MEMORY_COUNTER) == 0


def test_table_grows_of_both_reference_types_are_counted() -> None:
    store, exports, rewritten = instantiate(
        """
        (module
          (table $f 1 funcref) (table $e 1 externref)
          (func (export "f") (param i32) (result i32) (table.grow $f (ref.null func) (local.get 0)))
          (func (export "e") (param i32) (result i32)
            (table.grow $e (ref.null extern) (local.get 0))))
        """,
        table_elements=5,
    )
    assert exports["f"](store, 3) == 1
    assert exports["e"](store, 9) == -1
    assert exports["f"](store, 9) == -1
    assert counter(store, exports, cap_watch.TABLE_COUNTER) == 2
    assert cap_watch.MEMORY_COUNTER not in {
        e.name for e in wasmtime.Module(engine(), rewritten).exports
    }


def test_grows_after_every_kind_of_immediate_are_found() -> None:
    # Instructions of each immediate shape the decoder steps over, then a grow: a decoding
    # slip anywhere before it would miss the grow or break the module.
    store, exports, rewritten = instantiate(
        """
        (module
          (type $t (func (param i32) (result i32)))
          (memory $m0 1) (memory $m1 1)
          (table $tab 2 funcref)
          (global $g (mut i64) (i64.const -9223372036854775808))
          (data $d "abcd")
          (elem $el func $id)
          (elem (table $tab) (i32.const 1) func $id)
          (func $id (type $t) (local.get 0))
          (func $tail (param i32) (result i32) (return_call $id (local.get 0)))
          (func (export "busy") (param i32) (result i32) (local v128) (local f64)
            (block $out
              (loop $l
                (br_table $out $l (i32.const 0))))
            (local.set 1 (v128.const i64x2 0x4040404040404040 -1))
            (local.set 1 (i8x16.shuffle 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
                            (local.get 1) (local.get 1)))
            (local.set 1 (v128.load32_lane $m0 offset=64 2 (i32.const 0) (local.get 1)))
            (drop (i32x4.extract_lane 3 (local.get 1)))
            (local.set 2 (f64.const 64.0))
            (drop (f32.const 2.0))
            (global.set $g (i64.add (global.get $g) (i64.const 64)))
            (i32.store8 $m1 offset=64 (i32.const 0) (i32.const 64))
            (memory.init $m0 $d (i32.const 0) (i32.const 0) (i32.const 0))
            (memory.copy $m1 $m0 (i32.const 0) (i32.const 0) (i32.const 4))
            (memory.fill $m0 (i32.const 8) (i32.const 64) (i32.const 4))
            (data.drop $d)
            (table.init $tab $el (i32.const 0) (i32.const 0) (i32.const 0))
            (elem.drop $el)
            (drop (table.size $tab))
            (drop (select (result i32) (i32.const 1) (i32.const 2) (local.get 0)))
            (drop (call_indirect $tab (type $t) (i32.const 5) (i32.const 1)))
            (drop (ref.is_null (ref.func $id)))
            (drop (call $tail (i32.const 64)))
            (drop (i32.trunc_sat_f64_s (local.get 2)))
            (drop (memory.size $m1))
            (memory.grow $m1 (local.get 0))))
        """,
        memory_bytes=3 * PAGE,
    )
    assert exports["busy"](store, 1) == 1
    assert exports["busy"](store, 5) == -1
    assert counter(store, exports, cap_watch.MEMORY_COUNTER) == 1
    assert len(rewritten) > 0


def test_a_module_without_grows_or_with_the_reserved_names_is_left_alone() -> None:
    plain = bytes(wasmtime.wat2wasm('(module (memory 1) (func (export "f") (drop (memory.size))))'))
    assert cap_watch.instrument(plain) is None
    taken = bytes(
        wasmtime.wat2wasm(
            f"""(module (memory 1) (global (export "{cap_watch.MEMORY_COUNTER}") i32 (i32.const 7))
              (func (export "g") (result i32) (memory.grow (i32.const 1))))"""
        )
    )
    assert cap_watch.instrument(taken) is None


def test_grows_of_64_bit_memories_are_left_as_they_are() -> None:
    wasm = bytes(
        wasmtime.wat2wasm(
            '(module (memory i64 1) (func (export "g") (result i64) (memory.grow (i64.const 1))))'
        )
    )
    assert cap_watch.instrument(wasm) is None


def test_global_and_export_sections_are_added_in_order_when_missing() -> None:
    wasm = bytes(
        wasmtime.wat2wasm("(module (memory 1) (func (drop (memory.grow (i32.const 1)))) (start 0))")
    )
    rewritten = cap_watch.instrument(wasm)
    assert rewritten is not None
    ids = [sid for sid, _ in split_sections(rewritten) if sid != 0]
    assert ids == [1, 3, 5, 6, 7, 8, 10]
    wasmtime.Module.validate(engine(), rewritten)


@pytest.mark.parametrize("cut", [9, 20, -1])
def test_truncated_bytes_are_not_rewritten(cut: int) -> None:
    wasm = bytes(wasmtime.wat2wasm(GROW.format(maximum="")))
    assert cap_watch.instrument(wasm[:cut]) is None
