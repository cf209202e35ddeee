"""wasi:tensor (input, chunks, every return code) and wasi:scheduler (yield verdicts, the
clock) through a real sandbox, and the guest channel's rules on their own."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import wasmtime
from tensorwasm_executor.images.capture import capture_image
from tensorwasm_executor.metrics import CHUNKS_EMITTED
from tensorwasm_executor.wasm.guest_channel import (
    MAX_CHUNK_BYTES,
    EmitCode,
    GuestChannel,
    YieldVerdict,
)
from tensorwasm_executor.wasm.sandbox import CompiledModule, Outcome, Sandbox
from tensorwasm_executor.wasm.values import WasmValue

WAT = Path(__file__).parents[3] / "fixtures" / "wat"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(default_timeout_seconds=30.0) as box:
        yield box


@pytest.fixture(scope="module")
def source() -> bytes:
    return bytes(wasmtime.wat2wasm((WAT / "tensor_stream.wat").read_text()))


@pytest.fixture(scope="module")
def guest(sandbox: Sandbox, source: bytes) -> CompiledModule:
    return sandbox.compile(hashlib.sha256(source).hexdigest(), source)


def _result(outcome: Outcome) -> int:
    assert outcome.failure is None, outcome.failure
    assert outcome.results is not None
    value = outcome.results[0].payload
    assert isinstance(value, int)
    return value


def test_input_is_read_and_chunks_are_collected_in_order(
    sandbox: Sandbox, guest: CompiledModule
) -> None:
    outcome = sandbox.invoke(guest, "_start", [], guest_input=b"hello world")
    assert outcome.failure is None
    assert outcome.chunks == b"echo:hello world"


def test_streamed_chunks_go_to_the_sink_as_emitted(sandbox: Sandbox, guest: CompiledModule) -> None:
    chunks: list[bytes] = []
    before = CHUNKS_EMITTED._value.get()
    outcome = sandbox.invoke(
        guest, "_start", [], guest_input=b"abcdefg", on_chunk=lambda c: chunks.append(c) or True
    )
    assert outcome.failure is None and outcome.chunks == b""  # streamed, not kept
    assert chunks == [b"echo:", b"abc", b"def", b"g"]  # 3 bytes a chunk, hyphenated import
    assert CHUNKS_EMITTED._value.get() - before == 4


def test_chunks_and_output_keep_their_order(sandbox: Sandbox, guest: CompiledModule) -> None:
    events: list[tuple[str, bytes]] = []
    outcome = sandbox.invoke(
        guest,
        "interleave",
        [],
        on_output=lambda stream, data: events.append((stream, data)),
        on_chunk=lambda data: events.append(("chunk", data)) or True,
    )
    assert _result(outcome) == 0
    assert events == [("chunk", b"echo:"), ("stdout", b"out\n"), ("chunk", b"echo")]


def test_a_chunk_over_64_kib_is_refused_whole(sandbox: Sandbox, guest: CompiledModule) -> None:
    at_cap = sandbox.invoke(guest, "emit_len", [WasmValue.i32(MAX_CHUNK_BYTES)])
    assert _result(at_cap) == 0 and len(at_cap.chunks) == MAX_CHUNK_BYTES
    over = sandbox.invoke(guest, "emit_len", [WasmValue.i32(MAX_CHUNK_BYTES + 1)])
    assert _result(over) == int(EmitCode.OVER_CAP) and over.chunks == b""
    # A length that is negative as an i32 is a huge u32: over the cap, not out of bounds.
    huge = sandbox.invoke(guest, "emit_len", [WasmValue.i32(-1)])
    assert _result(huge) == int(EmitCode.OVER_CAP)


def test_the_64_mib_per_call_cap_refuses_the_chunk_past_it(
    sandbox: Sandbox, guest: CompiledModule
) -> None:
    received = [0]

    def count(data: bytes) -> bool:
        received[0] += len(data)
        return True

    outcome = sandbox.invoke(guest, "emit_until_refused", [WasmValue.i32(2000)], on_chunk=count)
    assert _result(outcome) == int(EmitCode.OVER_CAP)
    assert received[0] == 64 << 20  # exactly 1024 chunks of 64 KiB went out, none after


def test_a_client_gone_answers_minus_3_to_emit_and_flush(
    sandbox: Sandbox, guest: CompiledModule
) -> None:
    accepted: list[bytes] = []

    def sink(data: bytes) -> bool:
        if len(accepted) == 2:
            return False  # the streaming client went away
        accepted.append(data)
        return True

    outcome = sandbox.invoke(guest, "emit_until_refused", [WasmValue.i32(100)], on_chunk=sink)
    assert _result(outcome) == int(EmitCode.CLIENT_GONE)
    assert len(accepted) == 2
    channel = GuestChannel(sink=lambda _: False)
    assert channel.flush() == EmitCode.ACCEPTED
    assert channel.emit(b"x") == EmitCode.CLIENT_GONE
    assert channel.flush() == EmitCode.CLIENT_GONE
    assert _result(sandbox.invoke(guest, "flush_code", [])) == 0


def test_streaming_is_not_enabled_while_pre_initialising(
    sandbox: Sandbox, guest: CompiledModule, source: bytes
) -> None:
    image = capture_image(sandbox, guest, source, "init")
    assert _result(sandbox.invoke(guest, "last_code", [], image=image)) == int(EmitCode.NOT_ENABLED)


def test_read_input_is_a_cursor_and_input_len_the_total(
    sandbox: Sandbox, guest: CompiledModule
) -> None:
    data = bytes(range(256)) * 4
    assert _result(sandbox.invoke(guest, "input_length", [], guest_input=data)) == len(data)
    assert _result(
        sandbox.invoke(guest, "read_in_steps", [WasmValue.i32(100)], guest_input=data)
    ) == len(data)
    assert _result(sandbox.invoke(guest, "input_length", [])) == 0
    assert _result(sandbox.invoke(guest, "read_in_steps", [WasmValue.i32(7)])) == 0


@pytest.mark.parametrize("export", ["read_out_of_bounds", "emit_out_of_bounds"])
def test_a_range_outside_memory_traps(sandbox: Sandbox, guest: CompiledModule, export: str) -> None:
    outcome = sandbox.invoke(guest, export, [], guest_input=b"x" * 64)
    assert outcome.failure is not None and outcome.failure.reason == "TRAP"
    assert "outside linear memory" in outcome.failure.message


def test_a_resident_instance_keeps_its_input_unless_a_call_stages_one(
    sandbox: Sandbox, guest: CompiledModule
) -> None:
    resident, _ = sandbox.spawn(guest, guest_input=b"instance")
    assert resident is not None
    try:
        assert resident.call("_start", []).chunks == b"echo:instance"
        assert resident.call("_start", [], guest_input=b"call").chunks == b"echo:call"
        assert resident.call("_start", []).chunks == b"echo:instance"  # cursor re-armed
    finally:
        resident.terminate()


def test_yield_continues_and_the_clock_counts_down(sandbox: Sandbox, guest: CompiledModule) -> None:
    assert _result(sandbox.invoke(guest, "yield_once", [], timeout_seconds=30.0)) == 0
    remaining = _result(sandbox.invoke(guest, "remaining_ms", [], timeout_seconds=30.0))
    assert 0 < remaining <= 30_000


def test_a_yielding_guest_winds_down_before_its_deadline(
    sandbox: Sandbox, guest: CompiledModule
) -> None:
    # The unary path's epoch deadline counts ticks, which only come later than the wall
    # clock, so the guest always hears "wind down" first.
    verdict = _result(sandbox.invoke(guest, "spin_until_told", [], timeout_seconds=0.3))
    assert verdict in (int(YieldVerdict.DEADLINE_NEAR), int(YieldVerdict.STOP))


def test_a_cancelled_call_hears_stop(sandbox: Sandbox, guest: CompiledModule) -> None:
    channel = GuestChannel()
    cancel = threading.Event()
    channel.arm(time.monotonic() + 60, [cancel])
    assert channel.verdict() == YieldVerdict.CONTINUE
    cancel.set()
    assert channel.verdict() == YieldVerdict.STOP


def test_verdicts_and_remaining_follow_the_deadline() -> None:
    channel = GuestChannel()
    assert channel.remaining_ms() == 0xFFFF_FFFF  # unbounded until armed
    channel.arm(time.monotonic() + 0.005, [])
    assert channel.verdict() in (YieldVerdict.DEADLINE_NEAR, YieldVerdict.STOP)
    channel.arm(time.monotonic() - 1, [])
    assert channel.verdict() == YieldVerdict.STOP and channel.remaining_ms() == 0


def test_a_guest_that_never_yields_still_stops_at_its_deadline(
    sandbox: Sandbox, guest: CompiledModule
) -> None:
    outcome = sandbox.invoke(guest, "spin_forever", [], timeout_seconds=0.2)
    assert outcome.failure is not None and outcome.failure.reason == "DEADLINE_EXCEEDED"
    cancel = threading.Event()
    watched = sandbox.invoke(guest, "spin_forever", [], timeout_seconds=0.2, cancel=cancel)
    assert watched.failure is not None and watched.failure.reason == "DEADLINE_EXCEEDED"


def test_unbounded_remaining_is_minus_one_as_an_i32(sandbox: Sandbox, source: bytes) -> None:
    # Outside a call (an init run) there is no deadline: u32::MAX, i.e. -1.
    guest = sandbox.compile(hashlib.sha256(source).hexdigest(), source)
    with sandbox.init_store(source, digest=guest.digest) as (store, pre, _module):
        instance = pre.instantiate(store)
        remaining = instance.exports(store)["remaining_ms"]
        assert isinstance(remaining, wasmtime.Func)
        assert remaining(store) == -1
        input_length = instance.exports(store)["input_length"]
        assert isinstance(input_length, wasmtime.Func)
        assert input_length(store) == 0


def test_every_function_links_under_both_spellings(sandbox: Sandbox) -> None:
    imports = [
        ("wasi:tensor/host@0.1.0", name, params)
        for names, params in (
            (("emit_chunk", "emit-chunk"), 2),
            (("flush",), 0),
            (("input_len", "input-len"), 0),
            (("read_input", "read-input"), 2),
        )
        for name in names
    ] + [
        ("wasi:scheduler/host@0.1.0", name, 0)
        for name in ("yield", "deadline_remaining_ms", "deadline-remaining-ms")
    ]
    text = (
        "(module "
        + " ".join(
            f'(import "{module}" "{name}" (func (param {"i32 " * arity}) (result i32)))'
            for module, name, arity in imports
        )
        + ")"
    )
    wasm = bytes(wasmtime.wat2wasm(text))
    linked = sandbox.compile(hashlib.sha256(wasm).hexdigest(), wasm)
    assert {m for m in linked.imported_modules} == {
        "wasi:tensor/host@0.1.0",
        "wasi:scheduler/host@0.1.0",
    }
