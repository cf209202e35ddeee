"""The `wasi:tensor/host@0.1.0` and `wasi:scheduler/host@0.1.0` host modules: raw core-wasm
imports on the engine's linker, answering from the calling thread's `GuestChannel`.

Each function is registered under its underscore name and its hyphenated one
(`emit_chunk` and `emit-chunk`), since guests spell them either way. Pointers are u32
offsets into the caller's exported `memory`; a range outside it traps the guest (as a
load out of bounds would). A call without a channel (a pre-initialisation run) gets
not-enabled (-1) from the stream functions, no input, and an unbounded clock.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable

import wasmtime

from tensorwasm_executor.metrics import CHUNKS_EMITTED
from tensorwasm_executor.wasm.guest_channel import (
    UNBOUNDED_MS,
    EmitCode,
    GuestChannel,
    YieldVerdict,
    current_channel,
)
from tensorwasm_executor.wasm.rawcall import address_of

TENSOR_MODULE = "wasi:tensor/host@0.1.0"
SCHEDULER_MODULE = "wasi:scheduler/host@0.1.0"
_U32 = 0xFFFF_FFFF


class GuestMemoryError(Exception):
    """A guest passed a range outside its linear memory (the guest traps)."""


def _memory_range(caller: wasmtime.Caller, ptr: int, length: int, what: str) -> int:
    """The host address of the guest's [ptr, ptr+length) after checking it is in bounds."""
    memory = caller.get("memory")
    if not isinstance(memory, wasmtime.Memory):
        raise GuestMemoryError(f"{what}: the guest exports no memory")
    if ptr + length > memory.data_len(caller):
        raise GuestMemoryError(f"{what}: [{ptr}, {ptr + length}) is outside linear memory")
    return address_of(memory.data_ptr(caller))


def _emit_chunk(caller: wasmtime.Caller, ptr: int, length: int) -> int:
    channel = current_channel()
    if channel is None:
        return int(EmitCode.NOT_ENABLED)
    ptr, length = ptr & _U32, length & _U32
    if length > channel.max_chunk_bytes:  # before the bounds: a cap, not a guest bug
        return int(EmitCode.OVER_CAP)
    address = _memory_range(caller, ptr, length, "emit_chunk")
    code = channel.emit(ctypes.string_at(address + ptr, length) if length else b"")
    if code is EmitCode.ACCEPTED:
        CHUNKS_EMITTED.inc()
    return int(code)


def _flush(caller: wasmtime.Caller) -> int:
    channel = current_channel()
    return int(EmitCode.NOT_ENABLED if channel is None else channel.flush())


def _input_len(caller: wasmtime.Caller) -> int:
    channel = current_channel()
    return 0 if channel is None else len(channel.input)


def _read_input(caller: wasmtime.Caller, ptr: int, length: int) -> int:
    channel = current_channel()
    ptr, length = ptr & _U32, length & _U32
    address = _memory_range(caller, ptr, length, "read_input")
    data = b"" if channel is None else channel.read_input(length)
    if data:
        ctypes.memmove(address + ptr, data, len(data))
    return len(data)


def _yield(caller: wasmtime.Caller) -> int:
    channel = current_channel()
    time.sleep(0)  # a guest that yields lets the executor's other threads run
    return int(YieldVerdict.CONTINUE if channel is None else channel.verdict())


def _deadline_remaining_ms(caller: wasmtime.Caller) -> int:
    channel: GuestChannel | None = current_channel()
    remaining = UNBOUNDED_MS if channel is None else channel.remaining_ms()
    return remaining - (1 << 32) if remaining > 0x7FFF_FFFF else remaining  # as an i32


_HostFunction = Callable[..., int]
_FUNCTIONS: list[tuple[str, str, int, _HostFunction]] = [
    (TENSOR_MODULE, "emit_chunk", 2, _emit_chunk),
    (TENSOR_MODULE, "flush", 0, _flush),
    (TENSOR_MODULE, "input_len", 0, _input_len),
    (TENSOR_MODULE, "read_input", 2, _read_input),
    (SCHEDULER_MODULE, "yield", 0, _yield),
    (SCHEDULER_MODULE, "deadline_remaining_ms", 0, _deadline_remaining_ms),
]


def define(linker: wasmtime.Linker) -> None:
    """Defines both modules' functions, each under both spellings of its name."""
    i32 = wasmtime.ValType.i32()
    for module, name, arity, body in _FUNCTIONS:
        func_type = wasmtime.FuncType([i32] * arity, [i32])
        for spelling in sorted({name, name.replace("_", "-")}):
            linker.define_func(module, spelling, func_type, body, access_caller=True)
