"""Resident (stateful) instances and WASI options of the sandbox, on real wasm."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tensorwasm_common.errors import Code
from tensorwasm_executor.errors import InstanceBusyError, ResidentGoneError
from tensorwasm_executor.wasm.sandbox import CompiledModule, Resident, Sandbox, WasiOptions
from tensorwasm_executor.wasm.values import ValueType, WasmValue


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(default_timeout_seconds=5.0, epoch_tick_seconds=0.005) as box:
        yield box


@pytest.fixture
def compile_fixture(
    sandbox: Sandbox, wasm: Callable[[str], bytes]
) -> Callable[[str], CompiledModule]:
    def compile_(name: str) -> CompiledModule:
        data = wasm(name)
        return sandbox.compile(hashlib.sha256(data).hexdigest(), data)

    return compile_


@pytest.fixture
def counter(
    sandbox: Sandbox, compile_fixture: Callable[[str], CompiledModule]
) -> Iterator[Resident]:
    resident, outcome = sandbox.spawn(compile_fixture("counter"))
    assert resident is not None, outcome
    assert outcome.stdout == b"started\n"  # the start function ran once, at spawn
    yield resident
    resident.terminate()


@pytest.fixture
def loud_counter(
    sandbox: Sandbox, compile_fixture: Callable[[str], CompiledModule]
) -> Iterator[Resident]:
    """A counter whose `spin_loudly` writes "spinning" before it spins."""
    resident, outcome = sandbox.spawn(compile_fixture("loud_spin"))
    assert resident is not None, outcome
    yield resident
    resident.terminate()


def says_spinning(started: threading.Event) -> Callable[[str, bytes], None]:
    """An output sink for `spin_loudly`: sets `started` once the guest is spinning."""

    def sink(stream: str, data: bytes) -> None:
        if b"spinning" in data:
            started.set()

    return sink


def i32(value: int) -> WasmValue:
    return WasmValue(ValueType.I32, value)


def test_state_persists_across_calls(counter: Resident) -> None:
    results = [counter.call("inc", []).results for _ in range(3)]
    assert results == [(i32(1),), (i32(2),), (i32(3),)]
    assert counter.call("add", [i32(10)]).results == (i32(13),)


def test_each_call_has_its_own_output(counter: Resident) -> None:
    outcome = counter.call("inc", [])
    assert outcome.stdout == b""  # the start function's output is not repeated


def test_fresh_instances_do_not_share_state(
    sandbox: Sandbox, compile_fixture: Callable[[str], CompiledModule]
) -> None:
    module = compile_fixture("counter")
    first, _ = sandbox.spawn(module)
    second, _ = sandbox.spawn(module)
    assert first is not None and second is not None
    first.call("add", [i32(5)])
    assert second.call("inc", []).results == (i32(1),)
    assert sandbox.invoke(module, "inc", []).results == (i32(1),)
    first.terminate()
    second.terminate()


def test_deadline_per_call_and_the_instance_survives(counter: Resident) -> None:
    counter.call("inc", [])
    started = time.monotonic()
    outcome = counter.call("spin", [], timeout_seconds=0.1)
    assert time.monotonic() - started < 2.0
    assert outcome.failure is not None and outcome.failure.reason == "DEADLINE_EXCEEDED"
    assert outcome.failure.trap_code == "INTERRUPT"
    assert counter.call("inc", []).results == (i32(2),)  # re-armed, state kept


def test_a_trap_is_an_outcome(counter: Resident) -> None:
    outcome = counter.call("boom", [])
    assert outcome.failure is not None
    assert (outcome.failure.reason, outcome.failure.trap_code) == ("TRAP", "UNREACHABLE")


def test_terminate_stops_a_running_call(loud_counter: Resident) -> None:
    with ThreadPoolExecutor(1) as pool:
        spinning = threading.Event()
        running = pool.submit(
            loud_counter.call,
            "spin_loudly",
            [],
            timeout_seconds=30.0,
            on_output=says_spinning(spinning),
        )
        assert spinning.wait(60)
        started = time.monotonic()
        loud_counter.terminate()
        outcome = running.result(timeout=5)
    assert time.monotonic() - started < 2.0
    assert outcome.failure is not None and outcome.failure.reason == "CANCELLED"
    assert loud_counter.terminated
    with pytest.raises(ResidentGoneError) as caught:
        loud_counter.call("inc", [])
    assert (caught.value.code, caught.value.reason) == (Code.NOT_FOUND, "INSTANCE_NOT_FOUND")
    loud_counter.terminate()  # idempotent


def test_cancel_event_stops_one_call(loud_counter: Resident) -> None:
    cancel = threading.Event()  # set from inside the call, once the guest spins
    outcome = loud_counter.call(
        "spin_loudly", [], timeout_seconds=30.0, cancel=cancel, on_output=says_spinning(cancel)
    )
    assert outcome.failure is not None and outcome.failure.reason == "CANCELLED"
    assert loud_counter.call("inc", []).results == (i32(1),)


def test_calls_on_one_instance_take_turns(loud_counter: Resident) -> None:
    with ThreadPoolExecutor(1) as pool:
        started = threading.Event()
        spinning = pool.submit(
            loud_counter.call,
            "spin_loudly",
            [],
            timeout_seconds=0.3,
            on_output=says_spinning(started),
        )
        assert started.wait(60)
        assert loud_counter.call("inc", [], timeout_seconds=60.0).results == (i32(1),)  # waited
        assert spinning.result().failure is not None


def test_a_call_that_never_gets_a_turn_is_busy(loud_counter: Resident) -> None:
    with ThreadPoolExecutor(1) as pool:
        started, stop = threading.Event(), threading.Event()
        spinning = pool.submit(
            loud_counter.call, "spin_loudly", [], timeout_seconds=60.0, cancel=stop,
            on_output=says_spinning(started),
        )  # fmt: skip
        assert started.wait(60)
        with pytest.raises(InstanceBusyError) as caught:
            loud_counter.call("inc", [], timeout_seconds=0.05)
        stop.set()
        assert spinning.result().failure is not None
    assert (caught.value.code, caught.value.reason) == (Code.ABORTED, "INSTANCE_BUSY")


def test_a_failing_start_function_creates_nothing(
    sandbox: Sandbox, compile_fixture: Callable[[str], CompiledModule]
) -> None:
    resident, outcome = sandbox.spawn(compile_fixture("start_trap"))
    assert resident is None
    assert outcome.failure is not None and outcome.failure.trap_code == "UNREACHABLE"


def test_memory_cap_of_a_resident(
    sandbox: Sandbox, compile_fixture: Callable[[str], CompiledModule]
) -> None:
    resident, _ = sandbox.spawn(compile_fixture("counter"), max_memory_bytes=1 << 16)
    assert resident is not None
    assert resident.call("inc", []).results == (i32(1),)
    resident.terminate()


def test_argv_and_environment(
    sandbox: Sandbox, compile_fixture: Callable[[str], CompiledModule]
) -> None:
    module = compile_fixture("wasi_probe")
    options = WasiOptions(argv=("prog", "--flag", "ünïcode"), env=(("A", "1"), ("B", "x=y")))
    assert sandbox.invoke(module, "args", [], wasi=options).stdout == (
        "prog\0--flag\0ünïcode\0".encode()
    )
    assert sandbox.invoke(module, "environ", [], wasi=options).stdout == b"A=1\0B=x=y\0"
    assert sandbox.invoke(module, "args", []).stdout == b""  # nothing by default
    assert sandbox.invoke(module, "environ", []).stdout == b""


def test_read_only_directory(
    sandbox: Sandbox, compile_fixture: Callable[[str], CompiledModule], tmp_path: Path
) -> None:
    (tmp_path / "hello.txt").write_text("from the host\n")
    module = compile_fixture("wasi_probe")
    options = WasiOptions(read_only_dir=str(tmp_path))
    outcome = sandbox.invoke(module, "cat", [], wasi=options)
    assert outcome.results == (i32(0),)
    assert outcome.stdout == b"from the host\n"
    created = sandbox.invoke(module, "create", [], wasi=options)
    assert created.results is not None and created.results[0].payload != 0  # refused
    assert not (tmp_path / "new.txt").exists()


def test_no_filesystem_without_a_grant(
    sandbox: Sandbox, compile_fixture: Callable[[str], CompiledModule]
) -> None:
    outcome = sandbox.invoke(compile_fixture("wasi_probe"), "cat", [])
    assert outcome.results == (i32(8),)  # EBADF: fd 3 is not open
