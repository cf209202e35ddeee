"""Inline guest calls (inline.py): which calls run on the event loop, how an overrun is
preempted and run again on a worker, and how a tenant that overruns is held back."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import wasmtime
from prometheus_client import REGISTRY
from tensorwasm_executor.admission import Admission
from tensorwasm_executor.guest_calls import GuestCalls, Invocation
from tensorwasm_executor.inline import STRIKES_PER_WINDOW, WINDOW_SECONDS, InlinePolicy
from tensorwasm_executor.instances.table import InstanceTable
from tensorwasm_executor.scheduling import FairPool
from tensorwasm_executor.settings import ExecutorSettings
from tensorwasm_executor.wasm.engine import CompiledModule
from tensorwasm_executor.wasm.guest_io import WasiOptions
from tensorwasm_executor.wasm.sandbox import READY_STORES, Sandbox
from tensorwasm_executor.wasm.values import WasmValue

T = TypeVar("T")

# `count(n)` writes "x" to stdout, then counts to n and returns n: as long as asked.
COUNTER_WAT = """
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "x")
  (func (export "count") (param $n i32) (result i32)
    (local $i i32)
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 1))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.get $i)))
"""
# Far more CPU than the budget plus an epoch tick on any machine (a count takes at least a
# cycle: 0.2 s at 3 GHz), and a few seconds at most.
LONG_COUNT = 600_000_000
QUALIFY = 3
# Larger than the executor's default (1 ms): a short call's CPU time must stay under it on a
# loaded machine (the first runs of a module also pay one-time costs).
BUDGET = 0.05


class CountingPool(FairPool):
    """The real worker pool, counting the calls submitted to it."""

    def __init__(self) -> None:
        super().__init__(2, 2, thread_name_prefix="test-inline")
        self.submitted = 0

    def submit(self, tenant: str, function: Callable[..., T], /, *args: Any, **kwargs: Any) -> Any:
        self.submitted += 1
        return super().submit(tenant, function, *args, **kwargs)


class FakeModules:
    def __init__(self, module: CompiledModule) -> None:
        self.module = module

    async def get(self, digest: str, tenant: str = "") -> tuple[CompiledModule, bool]:
        return self.module, True


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    sandbox = Sandbox()
    yield sandbox
    sandbox.close()


@pytest.fixture(scope="module")
def counter(sandbox: Sandbox) -> CompiledModule:
    wasm = bytes(wasmtime.wat2wasm(COUNTER_WAT))
    return sandbox.compile(hashlib.sha256(wasm).hexdigest(), wasm)


@pytest.fixture
def pool() -> Iterator[CountingPool]:
    pool = CountingPool()
    yield pool
    pool.shutdown()


def _calls(sandbox: Sandbox, module: CompiledModule, pool: FairPool, **settings: Any) -> GuestCalls:
    options = {"inline_budget_seconds": BUDGET, "inline_qualify_calls": QUALIFY, **settings}
    return GuestCalls(
        ExecutorSettings(**options),
        sandbox,
        FakeModules(module),  # type: ignore[arg-type]
        pool,
        admission=Admission(max_in_flight=8, max_per_tenant=8),
        instances=InstanceTable(max_instances=4, max_per_tenant=2),
    )


def _count(calls: GuestCalls, module: CompiledModule, n: int, tenant: str = "acme") -> Any:
    invocation = Invocation(
        tenant=tenant,
        module_digest=module.digest,
        export_name="count",
        args=(WasmValue.i32(n),),
    )
    return asyncio.run(calls.invoke(invocation, threading.Event()))


def _inline_calls(result: str) -> float:
    value = REGISTRY.get_sample_value("tensorwasm_executor_inline_calls_total", {"result": result})
    return value or 0.0


def test_an_export_runs_inline_once_its_runs_on_workers_were_short(
    sandbox: Sandbox, counter: CompiledModule, pool: CountingPool
) -> None:
    calls = _calls(sandbox, counter, pool)
    for _ in range(QUALIFY):
        outcome = _count(calls, counter, 1)
        assert outcome.results == (WasmValue.i32(1),)
    assert pool.submitted == QUALIFY
    completed = _inline_calls("completed")

    outcome = _count(calls, counter, 2)

    assert outcome.results == (WasmValue.i32(2),)
    assert outcome.stdout == b"x"
    assert pool.submitted == QUALIFY  # not handed to a worker
    assert _inline_calls("completed") == completed + 1


def test_an_inline_call_leaves_its_store_and_the_next_ones_to_the_loops_idle_time(
    sandbox: Sandbox, counter: CompiledModule, pool: CountingPool
) -> None:
    calls = _calls(sandbox, counter, pool)
    for _ in range(QUALIFY):
        _count(calls, counter, 1)  # on workers: they close their stores themselves
    sandbox.tidy()
    made_ahead = sandbox.ready_stores

    for _ in range(2 * READY_STORES):
        assert _count(calls, counter, 2).stdout == b"x"  # inline

    assert pool.submitted == QUALIFY
    # The loop tidied after each call: the stores used were closed, new ones made ahead.
    assert sandbox.ready_stores == READY_STORES
    assert made_ahead in (0, READY_STORES)
    assert not sandbox._retired


def test_an_inline_call_that_overruns_is_run_again_on_a_worker_and_answers_once(
    sandbox: Sandbox, counter: CompiledModule, pool: CountingPool
) -> None:
    calls = _calls(sandbox, counter, pool)
    for _ in range(QUALIFY):
        _count(calls, counter, 1)
    preempted = _inline_calls("preempted")

    outcome = _count(calls, counter, LONG_COUNT)

    assert outcome.failure is None
    assert outcome.results == (WasmValue.i32(LONG_COUNT),)
    assert outcome.stdout == b"x"  # the stopped attempt's output is not in the answer
    assert _inline_calls("preempted") == preempted + 1
    assert pool.submitted == QUALIFY + 1
    # The export qualifies again from zero: its next call goes to a worker.
    _count(calls, counter, 1)
    assert pool.submitted == QUALIFY + 2


def test_with_a_zero_budget_every_call_goes_to_a_worker(
    sandbox: Sandbox, counter: CompiledModule, pool: CountingPool
) -> None:
    calls = _calls(sandbox, counter, pool, inline_budget_seconds=0)
    for _ in range(QUALIFY + 3):
        _count(calls, counter, 1)
    assert pool.submitted == QUALIFY + 3


def test_a_call_with_a_directory_never_runs_inline(
    sandbox: Sandbox, counter: CompiledModule, pool: CountingPool, tmp_path: Any
) -> None:
    calls = _calls(sandbox, counter, pool)
    invocation = Invocation(
        tenant="acme",
        module_digest=counter.digest,
        export_name="count",
        args=(WasmValue.i32(1),),
        wasi=WasiOptions(read_only_dir=str(tmp_path)),
    )
    for _ in range(QUALIFY + 2):
        asyncio.run(calls.invoke(invocation, threading.Event()))
    assert pool.submitted == QUALIFY + 2


@dataclass
class _Module:
    """What the policy reads of a compiled module: its digest and its imports."""

    digest: str
    module: wasmtime.Module


def _module(imports: str) -> Any:
    engine = wasmtime.Engine()
    wat = f'(module {imports} (func (export "f")))'
    return _Module(hashlib.sha256(wat.encode()).hexdigest(), wasmtime.Module(engine, wat))


def _qualified(policy: InlinePolicy, key: tuple[str, str, str]) -> None:
    for _ in range(QUALIFY):
        policy.ran(key, BUDGET / 10)


@pytest.mark.parametrize(
    ("imported", "inline"),
    [
        ((), True),
        (("wasi_snapshot_preview1", "fd_write"), True),
        (("wasi:tensor/host@0.1.0", "input-len"), True),
        (("wasi_snapshot_preview1", "poll_oneoff"), False),  # sleeps
        (("wasi_snapshot_preview1", "sock_recv"), False),
        (("wasi:cuda/host@0.1.0", "launch"), False),
    ],
)
def test_only_modules_whose_imports_never_block_run_inline(
    imported: tuple[str, ...], inline: bool
) -> None:
    module = _module(f'(import "{imported[0]}" "{imported[1]}" (func))' if imported else "")
    policy = InlinePolicy(BUDGET, QUALIFY)
    key = ("acme", module.digest, "f")
    _qualified(policy, key)
    assert policy.runs_inline(key, module) is inline


def test_an_export_qualifies_only_after_consecutive_short_runs() -> None:
    module = _module("")
    policy = InlinePolicy(BUDGET, QUALIFY)
    key = ("acme", module.digest, "f")
    for _ in range(QUALIFY - 1):
        policy.ran(key, BUDGET / 10)
    policy.ran(key, BUDGET * 2)  # one long run: start again
    policy.ran(key, BUDGET / 10)
    assert not policy.runs_inline(key, module)
    _qualified(policy, key)
    assert policy.runs_inline(key, module)
    # Another export, and the same export of another tenant, qualify on their own.
    assert not policy.runs_inline(("acme", module.digest, "g"), module)
    assert not policy.runs_inline(("other", module.digest, "f"), module)


def test_a_tenant_that_keeps_overrunning_runs_on_workers_for_the_rest_of_the_window() -> None:
    now = [1000.0]
    module = _module("")
    policy = InlinePolicy(BUDGET, QUALIFY, clock=lambda: now[0])
    keys = [("noisy", module.digest, f"e{i}") for i in range(STRIKES_PER_WINDOW + 1)]
    for key in keys[:STRIKES_PER_WINDOW]:
        _qualified(policy, key)
        assert policy.runs_inline(key, module)
        policy.preempted(key)
    fresh = keys[-1]
    _qualified(policy, fresh)
    assert not policy.runs_inline(fresh, module)  # held back: the tenant's strikes
    quiet = ("quiet", module.digest, "e0")
    _qualified(policy, quiet)
    assert policy.runs_inline(quiet, module)  # another tenant is not
    now[0] += WINDOW_SECONDS
    assert policy.runs_inline(fresh, module)  # the window is over


def test_an_inline_call_over_the_budget_that_completed_counts_as_an_overrun() -> None:
    module = _module("")
    policy = InlinePolicy(BUDGET, QUALIFY)
    key = ("acme", module.digest, "f")
    _qualified(policy, key)
    policy.ran_inline(key, BUDGET * 3)
    assert not policy.runs_inline(key, module)
