"""Unit tests for tensorwasm_executor.wasm.sandbox against real wasm compiled by wasmtime."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import wasmtime
from tensorwasm_common.errors import (
    Code,
    ExportNotFoundError,
    InvalidArgumentError,
    InvalidWasmError,
    UnavailableError,
)
from tensorwasm_executor.errors import (
    ArgumentMismatchError,
    UnsatisfiedImportError,
    UnsupportedValueTypeError,
)
from tensorwasm_executor.wasm.sandbox import (
    CompiledModule,
    ExportInfo,
    Failure,
    HostModule,
    Outcome,
    Sandbox,
)
from tensorwasm_executor.wasm.values import ValueType, WasmValue

NUMERIC = """
(module
  (func (export "add") (param i32 i32) (result i32) (i32.add (local.get 0) (local.get 1)))
  (func (export "id_i64") (param i64) (result i64) (local.get 0))
  (func (export "add_i64") (param i64 i64) (result i64) (i64.add (local.get 0) (local.get 1)))
  (func (export "id_f32") (param f32) (result f32) (local.get 0))
  (func (export "id_f64") (param f64) (result f64) (local.get 0))
  (func (export "f32_to_bits") (param f32) (result i32) (i32.reinterpret_f32 (local.get 0)))
  (func (export "bits_to_f32") (param i32) (result f32) (f32.reinterpret_i32 (local.get 0)))
  (func (export "f64_to_bits") (param f64) (result i64) (i64.reinterpret_f64 (local.get 0)))
  (func (export "bits_to_f64") (param i64) (result f64) (f64.reinterpret_i64 (local.get 0)))
  (func (export "add_f32") (param f32 f32) (result f32) (f32.add (local.get 0) (local.get 1)))
  (func (export "add_f64") (param f64 f64) (result f64) (f64.add (local.get 0) (local.get 1)))
  (func (export "id_v128") (param v128) (result v128) (local.get 0))
  (func (export "lanes") (result v128) (v128.const i32x4 1 2 3 4))
  (func (export "swap") (param i32 i64) (result i64 i32) (local.get 1) (local.get 0))
  (func (export "nothing"))
  (func (export "takes_ref") (param funcref))
  (func (export "typed_ref") (param (ref func)))
  (memory (export "memory") 1)
  (global (export "v128_global") v128 (v128.const i64x2 0 0))
)
"""

WASI = """
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "err!")
  (func (export "_start")
    (local $n i32)
    (block $done
      (loop $more
        (i32.store (i32.const 0) (i32.const 1024))
        (i32.store (i32.const 4) (i32.const 4096))
        (br_if $done (call $read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
        (local.set $n (i32.load (i32.const 16)))
        (br_if $done (i32.eqz (local.get $n)))
        (i32.store (i32.const 32) (i32.const 1024))
        (i32.store (i32.const 36) (local.get $n))
        (drop (call $write (i32.const 1) (i32.const 32) (i32.const 1) (i32.const 48)))
        (br $more)))
    (i32.store (i32.const 32) (i32.const 64))
    (i32.store (i32.const 36) (i32.const 4))
    (drop (call $write (i32.const 2) (i32.const 32) (i32.const 1) (i32.const 48))))
  (func (export "exit3") (call $exit (i32.const 3)))
  (func (export "exit0") (call $exit (i32.const 0)))
  (func (export "exit0_with_result") (result i32) (call $exit (i32.const 0)) (i32.const 1))
)
"""

TRAPS = """
(module
  (type $void (func))
  (type $takes_i32 (func (param i32)))
  (table 2 funcref)
  (elem (i32.const 1) $victim)
  (memory 1)
  (func $victim (param i32))
  (func (export "unreachable") unreachable)
  (func (export "div_zero") (drop (i32.div_s (i32.const 1) (i32.const 0))))
  (func (export "oob") (drop (i32.load (i32.const 70000))))
  (func (export "overflow") (drop (i32.div_s (i32.const -2147483648) (i32.const -1))))
  (func (export "null_call") (call_indirect (type $void) (i32.const 0)))
  (func (export "bad_sig") (call_indirect (type $void) (i32.const 1)))
  (func (export "table_oob") (call_indirect (type $void) (i32.const 7)))
  (func (export "bad_conversion") (drop (i32.trunc_f32_s (f32.const nan))))
  (func $recurse (export "recurse") (call $recurse))
  (func (export "spin") (loop $l (br $l)))
)
"""

F32_BITS = [0x7FA00000, 0x7FC00001, 0x80000000, 0x7F800000, 0x00000001, 0xFFFFFFFF, 0xFFA00001]
F64_BITS = [0x7FF4000000000001, 0x8000000000000000, 0xFFF8000000000000, 0x1, 0x7FF0000000000000]


def _compile(sandbox: Sandbox, wat: str) -> CompiledModule:
    wasm = bytes(wasmtime.wat2wasm(wat))
    return sandbox.compile(hashlib.sha256(wasm).hexdigest(), wasm)


def _ok(outcome: Outcome) -> tuple[WasmValue, ...]:
    assert outcome.failure is None, outcome.failure
    assert outcome.results is not None
    return outcome.results


def _failed(outcome: Outcome) -> Failure:
    assert outcome.results is None
    assert outcome.failure is not None
    return outcome.failure


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(default_timeout_seconds=30.0) as box:
        yield box


@pytest.fixture(scope="module")
def numeric(sandbox: Sandbox) -> CompiledModule:
    return _compile(sandbox, NUMERIC)


def test_exports_are_resolved_at_compile(numeric: CompiledModule) -> None:
    by_name = {info.name: info for info in numeric.exports}
    assert by_name["add"] == ExportInfo("add", (ValueType.I32, ValueType.I32), (ValueType.I32,))
    assert by_name["swap"].results == (ValueType.I64, ValueType.I32)
    assert by_name["id_v128"].params == (ValueType.V128,)
    assert by_name["takes_ref"].params == (ValueType.FUNCREF,)
    assert not {"memory", "v128_global", "typed_ref"} & by_name.keys()
    assert numeric.size_bytes == len(wasmtime.wat2wasm(NUMERIC))


def test_add_i32_and_wraparound(sandbox: Sandbox, numeric: CompiledModule) -> None:
    assert _ok(sandbox.invoke(numeric, "add", [WasmValue.i32(2), WasmValue.i32(40)])) == (
        WasmValue.i32(42),
    )
    wrapped = sandbox.invoke(numeric, "add", [WasmValue.i32((1 << 31) - 1), WasmValue.i32(1)])
    assert _ok(wrapped) == (WasmValue.i32(-(1 << 31)),)


@pytest.mark.parametrize("value", [-(1 << 63), (1 << 63) - 1, -1, 0])
def test_i64_extremes(sandbox: Sandbox, numeric: CompiledModule, value: int) -> None:
    assert _ok(sandbox.invoke(numeric, "id_i64", [WasmValue.i64(value)])) == (WasmValue.i64(value),)


def test_i64_wraps(sandbox: Sandbox, numeric: CompiledModule) -> None:
    args = [WasmValue.i64((1 << 63) - 1), WasmValue.i64(1)]
    assert _ok(sandbox.invoke(numeric, "add_i64", args)) == (WasmValue.i64(-(1 << 63)),)


@pytest.mark.parametrize("bits", F32_BITS, ids=hex)
def test_f32_bits_round_trip_exactly(sandbox: Sandbox, numeric: CompiledModule, bits: int) -> None:
    value = WasmValue.f32_bits(bits)
    assert _ok(sandbox.invoke(numeric, "id_f32", [value])) == (value,)
    signed = bits - (1 << 32) if bits >= 1 << 31 else bits
    assert _ok(sandbox.invoke(numeric, "f32_to_bits", [value])) == (WasmValue.i32(signed),)
    assert _ok(sandbox.invoke(numeric, "bits_to_f32", [WasmValue.i32(signed)])) == (value,)


@pytest.mark.parametrize("bits", F64_BITS, ids=hex)
def test_f64_bits_round_trip_exactly(sandbox: Sandbox, numeric: CompiledModule, bits: int) -> None:
    value = WasmValue.f64_bits(bits)
    assert _ok(sandbox.invoke(numeric, "id_f64", [value])) == (value,)
    signed = bits - (1 << 64) if bits >= 1 << 63 else bits
    assert _ok(sandbox.invoke(numeric, "f64_to_bits", [value])) == (WasmValue.i64(signed),)
    assert _ok(sandbox.invoke(numeric, "bits_to_f64", [WasmValue.i64(signed)])) == (value,)


def test_float_arithmetic(sandbox: Sandbox, numeric: CompiledModule) -> None:
    f32 = sandbox.invoke(numeric, "add_f32", [WasmValue.f32(1.5), WasmValue.f32(2.25)])
    assert _ok(f32) == (WasmValue.f32_bits(0x40700000),)  # 3.75
    f64 = sandbox.invoke(numeric, "add_f64", [WasmValue.f64(0.5), WasmValue.f64(3.0)])
    assert _ok(f64) == (WasmValue.f64_bits(0x400C000000000000),)  # 3.5


def test_v128(sandbox: Sandbox, numeric: CompiledModule) -> None:
    value = WasmValue.v128(bytes(range(0xF0, 0x100)))
    assert _ok(sandbox.invoke(numeric, "id_v128", [value])) == (value,)
    lanes = b"".join(i.to_bytes(4, "little") for i in (1, 2, 3, 4))
    assert _ok(sandbox.invoke(numeric, "lanes", [])) == (WasmValue.v128(lanes),)


def test_multi_value_and_no_result(sandbox: Sandbox, numeric: CompiledModule) -> None:
    swapped = sandbox.invoke(numeric, "swap", [WasmValue.i32(-7), WasmValue.i64(1 << 40)])
    assert _ok(swapped) == (WasmValue.i64(1 << 40), WasmValue.i32(-7))
    assert _ok(sandbox.invoke(numeric, "nothing", [])) == ()


def test_bad_calls_raise(sandbox: Sandbox, numeric: CompiledModule) -> None:
    with pytest.raises(ExportNotFoundError) as missing:
        sandbox.invoke(numeric, "nope", [])
    assert missing.value.metadata == {"export": "nope"}
    with pytest.raises(ExportNotFoundError):
        sandbox.invoke(numeric, "memory", [])
    with pytest.raises(ArgumentMismatchError) as arity:
        sandbox.invoke(numeric, "add", [WasmValue.i32(1)])
    assert arity.value.metadata == {"export": "add", "expected": "(i32, i32)", "got": "(i32)"}
    assert arity.value.code is Code.INVALID_ARGUMENT
    with pytest.raises(ArgumentMismatchError) as kind:
        sandbox.invoke(numeric, "add", [WasmValue.i32(1), WasmValue.i64(2)])
    assert kind.value.metadata["got"] == "(i32, i64)"
    for export in ("takes_ref", "typed_ref"):
        with pytest.raises(UnsupportedValueTypeError):
            sandbox.invoke(numeric, export, [])


def test_wasi_echo_stdin_to_stdout_and_stderr(sandbox: Sandbox) -> None:
    module = _compile(sandbox, WASI)
    data = bytes(range(256)) * 40  # more than one 4 KiB read
    outcome = sandbox.invoke(module, "_start", [], stdin=data)
    assert _ok(outcome) == ()
    assert outcome.stdout == data and outcome.stderr == b"err!"
    assert not outcome.stdout_truncated and not outcome.stderr_truncated
    assert outcome.guest_seconds >= 0.0
    empty = sandbox.invoke(module, "_start", [])
    assert (empty.stdout, empty.stderr) == (b"", b"err!")


def test_output_cap_truncates_and_flags(sandbox: Sandbox) -> None:
    module = _compile(sandbox, WASI)
    outcome = sandbox.invoke(module, "_start", [], stdin=b"x" * 100, max_output_bytes=10)
    assert _ok(outcome) == ()
    assert (outcome.stdout, outcome.stdout_truncated) == (b"x" * 10, True)
    assert (outcome.stderr, outcome.stderr_truncated) == (b"err!", False)
    exact = sandbox.invoke(module, "_start", [], stdin=b"y" * 4, max_output_bytes=4)
    assert (exact.stdout, exact.stdout_truncated, exact.stderr_truncated) == (b"yyyy", False, False)


def test_proc_exit(sandbox: Sandbox) -> None:
    module = _compile(sandbox, WASI)
    failure = _failed(sandbox.invoke(module, "exit3", []))
    assert (failure.reason, failure.exit_code, failure.trap_code) == ("PROC_EXIT", 3, None)
    assert _ok(sandbox.invoke(module, "exit0", [])) == ()
    zero = _failed(sandbox.invoke(module, "exit0_with_result", []))
    assert (zero.reason, zero.exit_code) == ("PROC_EXIT", 0)


@pytest.mark.parametrize(
    ("export", "code"),
    [
        ("unreachable", "UNREACHABLE"),
        ("div_zero", "INTEGER_DIVISION_BY_ZERO"),
        ("oob", "MEMORY_OUT_OF_BOUNDS"),
        ("overflow", "INTEGER_OVERFLOW"),
        ("null_call", "INDIRECT_CALL_TO_NULL"),
        ("bad_sig", "BAD_SIGNATURE"),
        ("table_oob", "TABLE_OUT_OF_BOUNDS"),
        ("bad_conversion", "BAD_CONVERSION_TO_INTEGER"),
        ("recurse", "STACK_OVERFLOW"),
    ],
)
def test_traps_map_to_codes(sandbox: Sandbox, export: str, code: str) -> None:
    failure = _failed(sandbox.invoke(_compile(sandbox, TRAPS), export, []))
    assert (failure.reason, failure.trap_code, failure.exit_code) == ("TRAP", code, None)
    assert failure.message


@pytest.mark.timeout(60)
def test_infinite_loop_hits_the_deadline(sandbox: Sandbox) -> None:
    started = time.monotonic()
    outcome = sandbox.invoke(_compile(sandbox, TRAPS), "spin", [], timeout_seconds=0.2)
    failure = _failed(outcome)
    assert (failure.reason, failure.trap_code) == ("DEADLINE_EXCEEDED", "INTERRUPT")
    # Never early: the deadline's ticks come at least one tick period apart, however
    # fast or loaded the machine (exact tick counts: test_deadline_ticks.py).
    assert time.monotonic() - started >= 0.2 - sandbox.epoch_tick_seconds


@pytest.mark.timeout(60)
def test_deadline_covers_the_start_function(sandbox: Sandbox) -> None:
    spin = '(module (func $s (loop $l (br $l))) (start $s) (func (export "f")))'
    failure = _failed(sandbox.invoke(_compile(sandbox, spin), "f", [], timeout_seconds=0.2))
    assert failure.reason == "DEADLINE_EXCEEDED"
    trap = '(module (func $s unreachable) (start $s) (func (export "f")))'
    failure = _failed(sandbox.invoke(_compile(sandbox, trap), "f", []))
    assert (failure.reason, failure.trap_code) == ("TRAP", "UNREACHABLE")


def test_timeout_must_be_positive_and_finite(sandbox: Sandbox, numeric: CompiledModule) -> None:
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(InvalidArgumentError):
            sandbox.invoke(numeric, "nothing", [], timeout_seconds=bad)
    assert _ok(sandbox.invoke(numeric, "nothing", [], timeout_seconds=1e300)) == ()


def test_invalid_wasm(sandbox: Sandbox) -> None:
    for bad in (b"not wasm", b"(module)", b"", b"\x00asm\x01\x00\x00\x00\x01"):
        with pytest.raises(InvalidWasmError) as caught:
            sandbox.compile("bad", bad)
        assert caught.value.code is Code.INVALID_ARGUMENT and caught.value.message
    assert sandbox.lookup("bad") is None


def test_unknown_imports_are_rejected_at_compile(sandbox: Sandbox) -> None:
    with pytest.raises(UnsatisfiedImportError) as caught:
        _compile(sandbox, '(module (import "env" "foo" (func)))')
    assert caught.value.code is Code.FAILED_PRECONDITION
    assert caught.value.metadata == {"module": "env", "name": "foo"}
    with pytest.raises(UnsatisfiedImportError) as wrong_type:
        _compile(sandbox, '(module (import "wasi_snapshot_preview1" "fd_write" (func)))')
    assert wrong_type.value.metadata["name"] == "fd_write"


def test_no_state_leaks_between_invocations(sandbox: Sandbox) -> None:
    module = _compile(
        sandbox,
        """(module (global $n (mut i32) (i32.const 0)) (memory 1)
             (func (export "bump") (result i32)
               (global.set $n (i32.add (global.get $n) (i32.const 1)))
               (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 10)))
               (i32.add (global.get $n) (i32.load (i32.const 0)))))""",
    )
    first = sandbox.invoke(module, "bump", [])
    assert _ok(first) == _ok(sandbox.invoke(module, "bump", [])) == (WasmValue.i32(11),)


def test_module_cache_is_an_lru() -> None:
    with Sandbox(module_cache_entries=2) as box:
        first = _compile(box, NUMERIC)
        assert _compile(box, NUMERIC) is first and box.lookup(first.digest) is first
        second = _compile(box, WASI)
        assert box.lookup(first.digest) is first  # now the most recently used
        _compile(box, TRAPS)
        assert box.lookup(second.digest) is None
        assert box.lookup(first.digest) is first


def test_engine_fingerprint_is_stable() -> None:
    with Sandbox() as one, Sandbox(epoch_tick_seconds=0.05) as two:
        assert one.engine_fingerprint == two.engine_fingerprint
        assert len(one.engine_fingerprint) == 64
        code = (
            "from tensorwasm_executor.wasm.sandbox import Sandbox\n"
            "with Sandbox() as box: print(box.engine_fingerprint)"
        )
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
        assert other.stdout.decode().strip() == one.engine_fingerprint


@pytest.mark.timeout(60)
def test_concurrent_invocations(sandbox: Sandbox, numeric: CompiledModule) -> None:
    spin = _compile(sandbox, TRAPS)

    def run(i: int) -> Outcome:
        if i % 4 == 0:
            return sandbox.invoke(spin, "spin", [], timeout_seconds=0.1)
        if i % 4 == 1:
            return sandbox.invoke(spin, "recurse", [])
        return sandbox.invoke(numeric, "add", [WasmValue.i32(i), WasmValue.i32(i)])

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(run, range(32)))
    for i, outcome in enumerate(outcomes):
        if i % 4 == 0:
            assert _failed(outcome).reason == "DEADLINE_EXCEEDED"
        elif i % 4 == 1:
            assert _failed(outcome).trap_code == "STACK_OVERFLOW"
        else:
            assert _ok(outcome) == (WasmValue.i32(2 * i),)


@pytest.mark.timeout(60)
def test_close_lets_in_flight_invocations_reach_their_deadline(
    wasm: Callable[[str], bytes],
) -> None:
    box = Sandbox()
    loud_spin = wasm("loud_spin")
    module = box.compile(hashlib.sha256(loud_spin).hexdigest(), loud_spin)
    spinning = threading.Event()

    def says_spinning(stream: str, data: bytes) -> None:
        if b"spinning" in data:
            spinning.set()

    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            box.invoke, module, "spin_loudly", [], timeout_seconds=0.3, on_output=says_spinning
        )
        assert spinning.wait(60)  # in flight: close() must wait for it, not refuse it
        box.close()
        assert _failed(pending.result()).reason == "DEADLINE_EXCEEDED"


def test_host_modules_extend_the_linker() -> None:
    def define(linker: wasmtime.Linker) -> None:
        i32 = wasmtime.ValType.i32()
        linker.define_func("test:host", "triple", wasmtime.FuncType([i32], [i32]), lambda x: 3 * x)

    wat = """(module (import "test:host" "triple" (func $t (param i32) (result i32)))
               (func (export "go") (param i32) (result i32) (call $t (local.get 0))))"""
    with Sandbox(host_modules=[HostModule("test:host", define)]) as box:
        assert _ok(box.invoke(_compile(box, wat), "go", [WasmValue.i32(-5)])) == (
            WasmValue.i32(-15),
        )
    with Sandbox() as plain, pytest.raises(UnsatisfiedImportError):
        _compile(plain, wat)


def test_host_exceptions_become_traps() -> None:
    def define(linker: wasmtime.Linker) -> None:
        def fail() -> None:
            raise RuntimeError("boom")

        linker.define_func("test:host", "fail", wasmtime.FuncType([], []), fail)

    wat = """(module (import "test:host" "fail" (func $f))
               (func (export "go") (call $f)) (func (export "ok")))"""
    with Sandbox(host_modules=[HostModule("test:host", define)]) as box:
        module = _compile(box, wat)
        failure = _failed(box.invoke(module, "go", []))
        assert (failure.reason, failure.trap_code) == ("TRAP", "OTHER")
        assert "boom" in failure.message
        assert _ok(box.invoke(module, "ok", [])) == ()


def test_closed_and_foreign_use(numeric: CompiledModule) -> None:
    box = Sandbox()
    box.close()
    box.close()
    with pytest.raises(ValueError, match="another Sandbox"):
        box.invoke(numeric, "nothing", [])
    module = _compile(box, NUMERIC)
    with pytest.raises(UnavailableError):
        box.invoke(module, "nothing", [])


def test_memory_grow_bomb_is_refused_and_instantiation_over_the_cap_fails() -> None:
    grow = """
    (module (memory 1)
      (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))
    """
    big = '(module (memory (export "m") 4096) (func (export "f")))'
    with Sandbox(max_memory_bytes=2 << 20) as sandbox:
        module = sandbox.compile("a" * 64, bytes(wasmtime.wat2wasm(grow)))
        # 16 pages (1 MiB) more fits under 2 MiB; 65535 pages (4 GiB) do not: grow returns -1.
        ok = sandbox.invoke(module, "grow", [WasmValue.i32(16)])
        bomb = sandbox.invoke(module, "grow", [WasmValue.i32(65535)])
        assert ok.results == (WasmValue.i32(1),)
        assert bomb.results == (WasmValue.i32(-1),)
        # The refused grow is reported; the one that fitted is not.
        assert (ok.memory_cap_hit, bomb.memory_cap_hit) == (False, True)
        assert not bomb.table_cap_hit
        huge = sandbox.compile("b" * 64, bytes(wasmtime.wat2wasm(big)))
        outcome = sandbox.invoke(huge, "f", [])
        assert outcome.failure is not None
        assert outcome.failure.reason == "MEMORY_LIMIT_EXCEEDED"
        assert outcome.failure.trap_code is None


_LOOP_WAT = (Path(__file__).parents[3] / "fixtures" / "wat" / "count.wat").read_text()


def test_fuel_budget_ends_a_guest_with_fuel_exhausted() -> None:
    with Sandbox(fuel_metering=True) as sandbox:
        module = sandbox.compile("c" * 64, bytes(wasmtime.wat2wasm(_LOOP_WAT)))
        small = sandbox.invoke(module, "count", [WasmValue.i64(10)], fuel=10_000)
        assert small.results == (WasmValue.i64(10),)
        starved = sandbox.invoke(module, "count", [WasmValue.i64(10**9)], fuel=10_000)
        assert starved.failure is not None
        assert starved.failure.reason == "FUEL_EXHAUSTED"
        assert starved.failure.trap_code == "OUT_OF_FUEL"
        unmetered = sandbox.invoke(module, "count", [WasmValue.i64(100_000)])
        assert unmetered.results == (WasmValue.i64(100_000),)


def test_fuel_without_metering_is_refused_and_metering_changes_the_fingerprint() -> None:
    with Sandbox() as plain, Sandbox(fuel_metering=True) as metered:
        module = plain.compile("c" * 64, bytes(wasmtime.wat2wasm(_LOOP_WAT)))
        with pytest.raises(InvalidArgumentError) as caught:
            plain.invoke(module, "count", [WasmValue.i64(1)], fuel=100)
        assert caught.value.reason == "FUEL_UNSUPPORTED"
        assert "TENSORWASM_EXECUTOR_FUEL_METERING=true" in str(caught.value)  # how to enable
        assert plain.engine_fingerprint != metered.engine_fingerprint


def test_per_call_memory_cap_is_clamped_to_the_sandbox_cap() -> None:
    wat = '(module (memory 32) (func (export "f")))'  # 2 MiB at instantiation
    with Sandbox(max_memory_bytes=4 << 20) as sandbox:
        module = sandbox.compile("d" * 64, bytes(wasmtime.wat2wasm(wat)))
        assert sandbox.invoke(module, "f", []).failure is None
        tight = sandbox.invoke(module, "f", [], max_memory_bytes=1 << 20)
        assert tight.failure is not None
        assert tight.failure.reason == "MEMORY_LIMIT_EXCEEDED"
        # Asking for more than the sandbox allows gets the sandbox's cap, not more.
        assert sandbox.invoke(module, "f", [], max_memory_bytes=1 << 40).failure is None


def test_a_call_asking_more_than_the_sandbox_cap_cannot_grow_past_it() -> None:
    grow = """
    (module (memory 1)
      (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))
    """
    big = '(module (memory 64) (func (export "f")))'  # 4 MiB at instantiation
    call_cap, sandbox_cap = 8 << 20, 2 << 20
    with Sandbox(max_memory_bytes=sandbox_cap) as sandbox:
        module = sandbox.compile("e" * 64, bytes(wasmtime.wat2wasm(grow)))
        # 1 page + 16 pages = 1.0625 MiB fits the sandbox's 2 MiB; 1 + 63 pages = 4 MiB is
        # within the call's 8 MiB but past the sandbox's cap, so the grow fails.
        fits = sandbox.invoke(module, "grow", [WasmValue.i32(16)], max_memory_bytes=call_cap)
        past = sandbox.invoke(module, "grow", [WasmValue.i32(63)], max_memory_bytes=call_cap)
        assert fits.results == (WasmValue.i32(1),)
        assert past.results == (WasmValue.i32(-1),)
        assert (fits.memory_cap_hit, past.memory_cap_hit) == (False, True)
        huge = sandbox.compile("f" * 64, bytes(wasmtime.wat2wasm(big)))
        outcome = sandbox.invoke(huge, "f", [], max_memory_bytes=call_cap)
        assert outcome.failure is not None
        assert outcome.failure.reason == "MEMORY_LIMIT_EXCEEDED"
        resident, spawned = sandbox.spawn(module, max_memory_bytes=call_cap)
        assert resident is not None and spawned.failure is None
        try:
            grown = resident.call("grow", [WasmValue.i32(63)])
            assert grown.results == (WasmValue.i32(-1),)
            assert grown.memory_cap_hit
            # A live instance reports per call: the next call, which fits, hit nothing.
            fitted = resident.call("grow", [WasmValue.i32(1)])
            assert fitted.results == (WasmValue.i32(1),)
            assert not fitted.memory_cap_hit
        finally:
            resident.terminate()
