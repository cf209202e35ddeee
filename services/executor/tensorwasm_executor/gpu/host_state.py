"""The per-store host state of the GPU import modules, and the guard every host function runs in.

A store that imports `wasi:cuda` or `tensorwasm:gpu` gets a `CudaHostState` (its guest's GPU
session and its linear memory); each host function finds it through
`current_host_state()` (set by the sandbox around the guest call, on the guest's thread).
A host function never raises into the guest: `guarded` answers not_available (-1) for a
store without a session and internal (-7, logged) for an unexpected exception.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from typing import Any

import wasmtime
from opentelemetry import context as otel_context
from tensorwasm_common.gpu_abi import AbiError
from tensorwasm_common.tenants import DEFAULT_TENANT

from tensorwasm_executor.gpu.cuda_session import CudaSession
from tensorwasm_executor.wasm.host_modules import current_host_state

_log = logging.getLogger(__name__)
_NOT_AVAILABLE = int(AbiError.NOT_AVAILABLE)
_INTERNAL = int(AbiError.INTERNAL)


class WasmMemory:
    """A guest's linear memory through a store or caller, read and written with ctypes."""

    def __init__(self, memory: wasmtime.Memory, store: wasmtime.Store | wasmtime.Caller) -> None:
        self._memory = memory
        self._store = store

    def size(self) -> int:
        return int(self._memory.data_len(self._store))

    def _address(self) -> int:
        # Taken again for every access: memory.grow may move the memory.
        pointer = self._memory.data_ptr(self._store)
        return ctypes.cast(pointer, ctypes.c_void_p).value or 0

    def read(self, start: int, length: int) -> bytes:
        if start + length > self.size():
            raise IndexError("read outside linear memory")
        return ctypes.string_at(self._address() + start, length) if length else b""

    def write(self, start: int, data: bytes) -> None:
        if start + len(data) > self.size():
            raise IndexError("write outside linear memory")
        if data:
            ctypes.memmove(self._address() + start, data, len(data))


class CudaHostState:
    """The sandbox's per-store host state for `wasi:cuda`: a session, the store's memory,
    and the trace context of the request it serves (made on the serving thread, so calls
    the guest's thread makes to other services join the request's trace)."""

    def __init__(self, session: CudaSession) -> None:
        self.session = session
        self.tenant = DEFAULT_TENANT  # the store's tenant (set by CudaHost.state_for)
        self.trace_context = otel_context.get_current()
        self._memory: wasmtime.Memory | None = None

    def memory(self, caller: wasmtime.Caller) -> WasmMemory | None:
        """The calling instance's exported `memory` (looked up once per store)."""
        if self._memory is None:
            found = caller.get("memory")
            if not isinstance(found, wasmtime.Memory):
                return None
            self._memory = found
        return WasmMemory(self._memory, caller)

    def begin_call(self, deadline: float) -> None:
        self.session.begin_call(deadline)

    def end_call(self, store: wasmtime.Store, *, completed: bool, final: bool) -> None:
        memory = None if self._memory is None else WasmMemory(self._memory, store)
        self.session.end_call(memory, completed=completed, final=final)

    def close(self) -> None:
        self.session.close()


def _state() -> CudaHostState | None:
    state = current_host_state()
    return state if isinstance(state, CudaHostState) else None


# A host function's body: (the store's state, the caller, *the wasm arguments) -> result.
HostBody = Callable[..., int]


def guarded(name: str, body: HostBody) -> Callable[..., int]:
    """A host function: -1 without a session, -7 (logged) on an unexpected exception."""

    def host_function(caller: wasmtime.Caller, *args: Any) -> int:
        state = _state()
        if state is None:
            return _NOT_AVAILABLE
        try:
            return body(state, caller, *args)
        except Exception:
            _log.exception("GPU host function %s failed", name)
            state.session.fail_internal(name)
            return _INTERNAL

    host_function.__name__ = name
    return host_function
