"""The `wasi:cuda/host@0.2.0` host module: five raw core-wasm imports on the engine's linker.

The functions are defined once, on the shared linker; each call finds the calling
store's session through `sandbox.current_host_state()` (set by the sandbox around the
guest call, on the guest's thread). A store without a session (the executor has no
dispatcher) gets not_available (-1) from every function, as the original's capability
gate answers. A host function never raises into the guest: an unexpected exception is
logged and answered with internal (-7).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import wasmtime
from tensorwasm.common.v1 import invocation_pb2
from tensorwasm_common.errors import ServiceError
from tensorwasm_common.gpu_abi import EXT_MODULE, MODULE, AbiError

from tensorwasm_executor.cuda_batch import Transport
from tensorwasm_executor.cuda_session import (
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_BATCH_COMMANDS,
    CudaSession,
)
from tensorwasm_executor.sandbox import CompiledModule, HostModule, current_host_state

if TYPE_CHECKING:
    from tensorwasm_executor.jit_host import JitHost

_log = logging.getLogger(__name__)
_NOT_AVAILABLE = int(AbiError.NOT_AVAILABLE)
_INTERNAL = int(AbiError.INTERNAL)
# The import modules whose functions use a store's session.
GPU_MODULES = frozenset({MODULE, EXT_MODULE})


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
    """The sandbox's per-store host state for `wasi:cuda`: a session and the store's memory."""

    def __init__(self, session: CudaSession) -> None:
        self.session = session
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


class CudaHost:
    """Makes the host module and, per store, the session of a module that imports it."""

    def __init__(
        self,
        transport_for: Callable[[str], Transport] | None,
        *,
        max_batch_commands: int = DEFAULT_MAX_BATCH_COMMANDS,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    ) -> None:
        """Configures the sessions.

        Args:
            transport_for: A tenant's transport to the dispatcher; None when the executor
                has no dispatcher (every `wasi:cuda` call answers not_available).
            max_batch_commands: Launches queued before a batch is sent.
            max_batch_bytes: Staged bytes queued before a batch is sent.
        """
        self._transport_for = transport_for
        self._max_batch_commands = max_batch_commands
        self._max_batch_bytes = max_batch_bytes
        self.host_module = HostModule(MODULE, define)
        # The jit host that runs auto-offloaded exports (offload.py); None: they run wasm.
        self.offload_jit: JitHost | None = None
        # The extension module (gpu_ext.py); other files add functions to it with
        # `gpu_ext.define_function` and a HostModule of their own in `host_modules`.
        from tensorwasm_executor import gpu_ext

        self.host_modules: list[HostModule] = [
            self.host_module,
            HostModule(EXT_MODULE, gpu_ext.define),
        ]

    def state_for(
        self,
        module: CompiledModule,
        tenant: str,
        offloads: Sequence[invocation_pb2.OffloadedExport] = (),
    ) -> CudaHostState | None:
        """A new store's state: a session when the module imports `wasi:cuda` or has
        `offloads` (run on the GPU when `offload_jit` is set) and a dispatcher is
        configured, else None (the guest pays nothing for the GPU path).

        Call it on the thread that serves the request: the transport keeps its trace
        context, so the dispatcher's spans join the invocation's trace.

        Declarations that do not fit the module are logged and ignored (the wasm runs).
        """
        if self._transport_for is None:
            return None
        planned, jit = None, self.offload_jit
        if offloads and jit is not None and jit.client is not None:
            from tensorwasm_executor import offload

            try:
                planned = offload.plan(module, offloads)
            except ServiceError as exc:  # the gateway checks them at deploy: not expected
                _log.warning("offload declarations ignored (the wasm runs): %s", exc)
        if not planned and not GPU_MODULES & module.imported_modules:
            return None
        session = CudaSession(
            self._transport_for(tenant),
            max_batch_commands=self._max_batch_commands,
            max_batch_bytes=self._max_batch_bytes,
        )
        if planned and jit is not None:
            return offload.OffloadingState(session, jit, planned)
        return CudaHostState(session)


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
            _log.exception("wasi:cuda %s failed", name)
            state.session.fail_internal(name)
            return _INTERNAL

    host_function.__name__ = name
    return host_function


def _load_ptx(state: CudaHostState, caller: wasmtime.Caller, *args: int) -> int:
    return state.session.load_ptx(state.memory(caller), *args)


def _launch(state: CudaHostState, caller: wasmtime.Caller, *args: int) -> int:
    kernel, gx, gy, gz, bx, by, bz, shared_mem, args_ptr, args_len = args
    memory = state.memory(caller)
    return state.session.launch(
        memory,
        kernel,
        grid=(gx, gy, gz),
        block=(bx, by, bz),
        shared_mem=shared_mem,
        args_ptr=args_ptr,
        args_len=args_len,
    )


def _sync(state: CudaHostState, caller: wasmtime.Caller) -> int:
    return state.session.sync(state.memory(caller))


def _last_error_len(state: CudaHostState, caller: wasmtime.Caller) -> int:
    return state.session.last_error_len()


def _last_error_copy(state: CudaHostState, caller: wasmtime.Caller, *args: int) -> int:
    return state.session.last_error_copy(state.memory(caller), *args)


def define(linker: wasmtime.Linker) -> None:
    """Defines the five `wasi:cuda/host@0.2.0` functions, with the original's signatures."""
    i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
    functions: list[tuple[str, list[wasmtime.ValType], wasmtime.ValType, Callable[..., int]]] = [
        ("wasi_cuda_load_ptx", [i32] * 4, i64, _load_ptx),
        ("wasi_cuda_launch", [i64] + [i32] * 9, i32, _launch),
        ("wasi_cuda_sync", [], i32, _sync),
        ("wasi_cuda_last_error_len", [], i32, _last_error_len),
        ("wasi_cuda_last_error_copy", [i32] * 2, i32, _last_error_copy),
    ]
    for name, params, result, body in functions:
        linker.define_func(
            MODULE,
            name,
            wasmtime.FuncType(params, [result]),
            guarded(name, body),
            access_caller=True,
        )
