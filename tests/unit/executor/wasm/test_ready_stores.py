"""Stores made ahead (`Sandbox.tidy`): a plain fresh call may take a store the sandbox made
in its caller's idle time, and must not be able to tell it from one made for it; and a
call leaves no reference cycles behind for the collector."""

from __future__ import annotations

import gc
import hashlib
import threading
from collections.abc import Iterator

import pytest
import wasmtime
from tensorwasm_common.errors import UnavailableError
from tensorwasm_executor.wasm.guest_io import WasiOptions
from tensorwasm_executor.wasm.sandbox import READY_STORES, CompiledModule, Sandbox
from tensorwasm_executor.wasm.values import WasmValue

# `bump` adds one to a mutable global and to the first word of memory, writes "x" to stdout
# and returns both sums: 1 and 1 in a fresh instance, whatever ran before in other stores.
BUMP_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $g (mut i32) (i32.const 0))
  (data (i32.const 32) "x")
  (func (export "bump") (result i32 i32)
    (global.set $g (i32.add (global.get $g) (i32.const 1)))
    (i32.store (i32.const 0) (i32.add (i32.load (i32.const 0)) (i32.const 1)))
    (i32.store (i32.const 16) (i32.const 32))
    (i32.store (i32.const 20) (i32.const 1))
    (drop (call $fd_write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 24)))
    (global.get $g)
    (i32.load (i32.const 0))))
"""
FRESH = (WasmValue.i32(1), WasmValue.i32(1))


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    sandbox = Sandbox()
    yield sandbox
    sandbox.close()


@pytest.fixture
def bump(sandbox: Sandbox) -> CompiledModule:
    wasm = bytes(wasmtime.wat2wasm(BUMP_WAT))
    return sandbox.compile(hashlib.sha256(wasm).hexdigest(), wasm)


def _bump(sandbox: Sandbox, module: CompiledModule, **options: object) -> tuple[object, bytes]:
    outcome = sandbox.invoke(module, "bump", (), cancel=threading.Event(), **options)  # type: ignore[arg-type]
    assert outcome.failure is None
    return outcome.results, outcome.stdout


def test_no_store_is_made_ahead_until_a_call_leaves_its_store_to_tidy(
    sandbox: Sandbox, bump: CompiledModule
) -> None:
    _bump(sandbox, bump)
    sandbox.tidy()
    assert sandbox.ready_stores == 0


def test_calls_on_stores_made_ahead_each_see_a_fresh_instance(
    sandbox: Sandbox, bump: CompiledModule
) -> None:
    assert _bump(sandbox, bump, defer_close=True) == (FRESH, b"x")
    sandbox.tidy()
    assert sandbox.ready_stores == READY_STORES

    for _ in range(3 * READY_STORES):
        before = sandbox.ready_stores
        # Every call takes a store made ahead, and sees only its own state and output.
        assert _bump(sandbox, bump, defer_close=True) == (FRESH, b"x")
        assert sandbox.ready_stores == before - 1
        sandbox.tidy()
        assert sandbox.ready_stores == READY_STORES


def test_a_call_with_stdin_or_wasi_options_makes_its_own_store(
    sandbox: Sandbox, bump: CompiledModule
) -> None:
    _bump(sandbox, bump, defer_close=True)
    sandbox.tidy()

    assert _bump(sandbox, bump, stdin=b"in") == (FRESH, b"x")
    assert _bump(sandbox, bump, wasi=WasiOptions(argv=("bump", "-v"))) == (FRESH, b"x")
    assert _bump(sandbox, bump, max_memory_bytes=1 << 20) == (FRESH, b"x")
    assert sandbox.ready_stores == READY_STORES


def test_stores_are_made_ahead_for_the_memory_cap_of_the_last_plain_call(
    sandbox: Sandbox, bump: CompiledModule
) -> None:
    _bump(sandbox, bump, defer_close=True)
    sandbox.tidy()
    _bump(sandbox, bump, max_memory_bytes=1 << 20, defer_close=True)
    sandbox.tidy()
    assert sandbox.ready_stores == READY_STORES  # the earlier cap's were closed

    # They hold the new cap: a call with that cap takes one, one with the default does not.
    _bump(sandbox, bump, max_memory_bytes=1 << 20)
    assert sandbox.ready_stores == READY_STORES - 1
    _bump(sandbox, bump)
    assert sandbox.ready_stores == READY_STORES - 1


def test_a_store_made_ahead_keeps_the_memory_cap_it_was_made_for(sandbox: Sandbox) -> None:
    wasm = bytes(
        wasmtime.wat2wasm(
            '(module (memory 1) (func (export "grow") (param i32) (result i32)'
            " (memory.grow (local.get 0))))"
        )
    )
    module = sandbox.compile(hashlib.sha256(wasm).hexdigest(), wasm)
    cap = 4 * 65536
    grow = (WasmValue.i32(8),)  # to 9 pages: past the cap
    outcome = sandbox.invoke(
        module, "grow", grow, cancel=threading.Event(), max_memory_bytes=cap, defer_close=True
    )
    assert outcome.results == (WasmValue.i32(-1),)
    sandbox.tidy()

    outcome = sandbox.invoke(module, "grow", grow, cancel=threading.Event(), max_memory_bytes=cap)

    assert sandbox.ready_stores == READY_STORES - 1  # it ran on a store made ahead
    assert outcome.results == (WasmValue.i32(-1),)


def test_close_closes_the_stores_made_ahead_and_those_left_to_tidy(
    sandbox: Sandbox, bump: CompiledModule
) -> None:
    _bump(sandbox, bump, defer_close=True)
    sandbox.tidy()
    ready = [store for stores in sandbox._ready.values() for store in stores]
    _bump(sandbox, bump, defer_close=True)  # its store left to tidy
    left = list(sandbox._retired)
    assert len(ready) == READY_STORES and len(left) == 1

    sandbox.close()

    assert sandbox.ready_stores == 0
    for call_store in [*ready, *left]:
        with pytest.raises(ValueError, match="closed"):
            call_store.store._context()  # a closed store has no context
    with pytest.raises(UnavailableError):
        _bump(sandbox, bump)
    sandbox.tidy()  # makes nothing once closed
    assert sandbox.ready_stores == 0


def test_calls_leave_nothing_to_the_cyclic_collector(
    sandbox: Sandbox, bump: CompiledModule
) -> None:
    # Without it every call left a dozen objects in reference cycles (the epoch watch and
    # its ctypes callback, the store's context pointer), and the collector's passes over
    # them landed on a call now and then.
    def calls(count: int) -> None:
        for index in range(count):
            outcome = sandbox.invoke(
                bump, "bump", (), cancel=threading.Event(), preempt_after=60.0,
                defer_close=index % 2 == 0,
            )  # fmt: skip
            assert outcome.results == FRESH
            sandbox.tidy()

    calls(4)  # first-use costs: types and caches made once
    count = 40
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        calls(count)
        gc.collect()
        left = [type(item).__name__ for item in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert len(left) < count, sorted(left)  # not one object per call, let alone a cycle
