"""Unit tests for tensorwasm_executor.wasm.rawcall's prepared calls, on real wasm."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
import wasmtime
from tensorwasm_common.errors import ExportNotFoundError
from tensorwasm_executor.wasm import rawcall
from tensorwasm_executor.wasm.sandbox import Sandbox
from tensorwasm_executor.wasm.values import ValueType, WasmValue

I32, I64, F32, F64, V128 = (
    ValueType.I32, ValueType.I64, ValueType.F32, ValueType.F64, ValueType.V128,
)  # fmt: skip

SHAPES = """
(module
  (import "host" "descend" (func $descend (param i32) (result i32)))
  (func (export "nothing"))
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "three") (result i64 f64 i32)
    (i64.const -7) (f64.const -0.0) (i32.const 9))
  (func (export "mixed") (param i32 i64 f32 f64 v128) (result v128 f64 f32 i64 i32)
    (local.get 4) (local.get 3) (local.get 2) (local.get 1) (local.get 0))
  (func (export "div") (param i32 i32) (result i32) (i32.div_s (local.get 0) (local.get 1)))
  (func (export "spin") (loop $l (br $l)))
  ;; depth(0) = 100; depth(n) = n + descend(n), where the host's descend calls depth(n - 1)
  (func (export "depth") (param i32) (result i32 i64)
    (if (result i32 i64) (i32.eqz (local.get 0))
      (then (i32.const 100) (i64.const 0))
      (else
        (i32.add (local.get 0) (call $descend (local.get 0)))
        (i64.extend_i32_u (local.get 0)))))
)
"""


class Guest:
    """One store and instance of SHAPES, its host `descend` set by each test."""

    def __init__(self, *, consume_fuel: bool = False) -> None:
        config = wasmtime.Config()
        config.epoch_interruption = True
        config.consume_fuel = consume_fuel
        self.engine = wasmtime.Engine(config)
        self.store = wasmtime.Store(self.engine)
        self.store.set_epoch_deadline(1 << 40)
        if consume_fuel:
            self.store.set_fuel(1 << 40)
        self.descend: Any = lambda n: 0
        host = wasmtime.Func(
            self.store,
            wasmtime.FuncType([wasmtime.ValType.i32()], [wasmtime.ValType.i32()]),
            self._host_descend,
        )
        module = wasmtime.Module(self.engine, wasmtime.wat2wasm(SHAPES))
        self.instance = wasmtime.Instance(self.store, module, [host])._instance

    def _host_descend(self, n: int) -> int:
        result: int = self.descend(n)  # read per call: each test sets its own
        return result

    def export(
        self, name: str, params: tuple[ValueType, ...], results: tuple[ValueType, ...]
    ) -> rawcall.ExportCall:
        return rawcall.ExportCall(self.store, self.instance, name, params, results)


@pytest.fixture
def guest() -> Iterator[Guest]:
    guest = Guest()
    yield guest
    guest.store.close()


MIXED_PARAMS = (I32, I64, F32, F64, V128)
MIXED_RESULTS = (V128, F64, F32, I64, I32)


def mixed_args(seed: int) -> tuple[WasmValue, ...]:
    return (
        WasmValue.i32(-seed),
        WasmValue.i64(-(1 << 62) + seed),
        WasmValue.f32_bits(0x7FA00000 + seed),  # a signalling NaN payload
        WasmValue.f64_bits(0xFFF4000000000000 + seed),
        WasmValue.v128(bytes(range(seed, seed + 16))),
    )


def test_one_prepared_call_reused_keeps_every_value_bit_exact(guest: Guest) -> None:
    mixed = guest.export("mixed", MIXED_PARAMS, MIXED_RESULTS)
    for seed in (1, 200, 3, 0):  # each call's values, none left over from the one before
        args = mixed_args(seed)
        assert mixed(args) == tuple(reversed(args))


def test_prepared_calls_of_every_arity_interleave(guest: Guest) -> None:
    nothing = guest.export("nothing", (), ())
    add = guest.export("add", (I32, I32), (I32,))
    three = guest.export("three", (), (I64, F64, I32))
    mixed = guest.export("mixed", MIXED_PARAMS, MIXED_RESULTS)
    for round_ in range(3):
        assert add((WasmValue.i32(round_), WasmValue.i32(-2))) == (WasmValue.i32(round_ - 2),)
        assert nothing(()) == ()
        assert mixed(mixed_args(round_)) == tuple(reversed(mixed_args(round_)))
        assert three(()) == (
            WasmValue.i64(-7), WasmValue.f64_bits(0x8000000000000000), WasmValue.i32(9),
        )  # fmt: skip
        assert add((WasmValue.i32(2**31 - 1), WasmValue.i32(1))) == (WasmValue.i32(-(2**31)),)


def test_one_shot_calls_match_the_prepared_ones(guest: Guest) -> None:
    args = mixed_args(5)
    once = rawcall.call(guest.store, guest.instance, "mixed", MIXED_RESULTS, args)
    assert once == guest.export("mixed", MIXED_PARAMS, MIXED_RESULTS)(args)
    assert rawcall.call(guest.store, guest.instance, "nothing", (), ()) == ()


def test_a_trap_is_raised_once_and_the_next_call_runs(guest: Guest) -> None:
    div = guest.export("div", (I32, I32), (I32,))
    with pytest.raises(wasmtime.Trap) as trapped:
        div((WasmValue.i32(1), WasmValue.i32(0)))
    assert trapped.value.trap_code is wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO
    assert div((WasmValue.i32(9), WasmValue.i32(3))) == (WasmValue.i32(3),)


def test_a_host_function_calling_back_into_the_same_export(guest: Guest) -> None:
    depth = guest.export("depth", (I32,), (I32, I64))
    seen: list[tuple[int, tuple[WasmValue, ...]]] = []

    def descend(n: int) -> int:
        results = depth((WasmValue.i32(n - 1),))  # re-enters while the outer call runs
        seen.append((n - 1, results))
        payload = results[0].payload
        assert isinstance(payload, int)
        return payload

    guest.descend = descend
    assert depth((WasmValue.i32(3),)) == (WasmValue.i32(106), WasmValue.i64(3))
    assert seen == [
        (0, (WasmValue.i32(100), WasmValue.i64(0))),
        (1, (WasmValue.i32(101), WasmValue.i64(1))),
        (2, (WasmValue.i32(103), WasmValue.i64(2))),
    ]
    assert depth((WasmValue.i32(0),)) == (WasmValue.i32(100), WasmValue.i64(0))


def test_a_nested_trap_caught_by_the_host_leaves_the_outer_call_whole(guest: Guest) -> None:
    depth = guest.export("depth", (I32,), (I32, I64))
    div = guest.export("div", (I32, I32), (I32,))

    def descend(n: int) -> int:
        with pytest.raises(wasmtime.Trap):
            div((WasmValue.i32(n), WasmValue.i32(0)))
        return 1

    guest.descend = descend
    assert depth((WasmValue.i32(5),)) == (WasmValue.i32(6), WasmValue.i64(5))


def test_a_closed_store_is_refused_not_called(guest: Guest) -> None:
    add = guest.export("add", (I32, I32), (I32,))
    context = rawcall.StoreContext(guest.store)
    guest.store.close()
    with pytest.raises(ValueError, match="closed"):
        add((WasmValue.i32(1), WasmValue.i32(2)))
    with pytest.raises(ValueError, match="closed"):
        context.set_epoch_deadline(1)


@pytest.mark.parametrize("name", ["absent", "descend"])
def test_no_such_function_export(guest: Guest, name: str) -> None:
    with pytest.raises(ExportNotFoundError):
        guest.export(name, (), ())


def test_store_context_sets_the_epoch_deadline(guest: Guest) -> None:
    spin = guest.export("spin", (), ())
    context = rawcall.StoreContext(guest.store)
    context.set_epoch_deadline(0)  # already reached: the loop's first check traps
    with pytest.raises(wasmtime.Trap) as trapped:
        spin(())
    assert trapped.value.trap_code is wasmtime.TrapCode.INTERRUPT


def test_store_context_sets_fuel_or_says_it_cannot(guest: Guest) -> None:
    with pytest.raises(wasmtime.WasmtimeError, match="fuel"):
        rawcall.StoreContext(guest.store).set_fuel(10)
    metered = Guest(consume_fuel=True)
    try:
        rawcall.StoreContext(metered.store).set_fuel(1000)
        assert metered.store.get_fuel() == 1000
        with pytest.raises(wasmtime.Trap) as trapped:
            metered.export("spin", (), ())(())
        assert trapped.value.trap_code is wasmtime.TrapCode.OUT_OF_FUEL
    finally:
        metered.store.close()


RESIDENT = """
(module
  (global $total (mut i64) (i64.const 0))
  (func (export "bump") (param i64) (result i64)
    (global.set $total (i64.add (global.get $total) (local.get 0))) (global.get $total))
  (func (export "pair") (result i32 f32) (i32.const -1) (f32.const -0.0))
  (func (export "none"))
  (func (export "lanes") (param v128 i32) (result v128) (local.get 0))
)
"""


def test_a_live_instance_calls_exports_of_every_shape_in_turn() -> None:
    wasm = bytes(wasmtime.wat2wasm(RESIDENT))
    with Sandbox() as sandbox:
        module = sandbox.compile(hashlib.sha256(wasm).hexdigest(), wasm)
        resident, outcome = sandbox.spawn(module)
        assert resident is not None, outcome
        try:
            lanes = WasmValue.v128(bytes(range(16, 32)))
            for round_ in range(1, 4):
                assert resident.call("bump", (WasmValue.i64(10),)).results == (
                    WasmValue.i64(10 * round_),
                )
                assert resident.call("none", ()).results == ()
                assert resident.call("lanes", (lanes, WasmValue.i32(round_))).results == (lanes,)
                assert resident.call("pair", ()).results == (
                    WasmValue.i32(-1), WasmValue.f32_bits(0x80000000),
                )  # fmt: skip
        finally:
            resident.terminate()
