"""Registered kernels for guests, in our import module `tensorwasm:gpu/host@0.1.0`.

- `kernel_by_name(name_ptr, name_len, version_ptr, version_len) -> i64` (all i32): a
  kernel id (>= 0) usable with `wasi_cuda_launch`, or a negative code of the `wasi:cuda`
  ABI: -9 a name or version that is empty, over 64 bytes or not UTF-8; -2 either outside
  linear memory; -3 no kernel of that name@version is registered for the tenant (its own
  namespace, then the shared catalogue); -4 the stored PTX does not match its manifest's
  digest (the dispatcher checks it again before loading); -1 no snapshot store or
  dispatcher reachable.

Kernels are loaded into the store's `wasi:cuda` session once per store (their ids are that
session's).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import wasmtime
from opentelemetry import context as otel_context
from tensorwasm_common.gpu_abi import EXT_MODULE, AbiError, AbiFailure

from tensorwasm_executor.gpu.abi import as_u32, check_region
from tensorwasm_executor.gpu.cuda_session import CudaSession
from tensorwasm_executor.gpu.host_state import CudaHostState, WasmMemory
from tensorwasm_executor.gpu.registry_client import KernelRegistryClient
from tensorwasm_executor.wasm.sandbox import HostModule, current_host_state

MAX_NAME_BYTES = 64
MAX_VERSION_BYTES = 64
_log = logging.getLogger(__name__)


class RegisteredKernelHost:
    """Defines `kernel_by_name`; holds the registry client and each store's kernel ids."""

    def __init__(self, client: KernelRegistryClient | None) -> None:
        """Args: client: the snapshot store's registered kernels; None: -1 always."""
        self._client = client
        self._loaded: weakref.WeakKeyDictionary[CudaSession, dict[tuple[str, str], int]] = (
            weakref.WeakKeyDictionary()
        )
        self.host_module = HostModule(EXT_MODULE, self.define)

    def define(self, linker: wasmtime.Linker) -> None:
        """Defines `kernel_by_name` on the engine's linker."""
        i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
        linker.define_func(
            EXT_MODULE,
            "kernel_by_name",
            wasmtime.FuncType([i32] * 4, [i64]),
            self._kernel_by_name,
            access_caller=True,
        )

    def close(self) -> None:
        """Closes the registry client's channel."""
        if self._client is not None:
            self._client.close()

    def _kernel_by_name(self, caller: wasmtime.Caller, *args: Any) -> int:
        state = current_host_state()
        if not isinstance(state, CudaHostState) or self._client is None:
            return int(AbiError.NOT_AVAILABLE)
        # the store's spans join the invocation's trace (this is the guest's thread)
        token = otel_context.attach(state.trace_context)
        try:
            return self._resolve(state, self._client, caller, *args)
        except AbiFailure as failure:
            return state.session.fail(failure)
        except Exception:
            _log.exception("tensorwasm:gpu kernel_by_name failed")
            return state.session.fail_internal("kernel_by_name")
        finally:
            otel_context.detach(token)

    def _resolve(
        self,
        state: CudaHostState,
        client: KernelRegistryClient,
        caller: wasmtime.Caller,
        *args: int,
    ) -> int:
        name_ptr, name_len, version_ptr, version_len = args
        memory = state.memory(caller)
        if memory is None:
            raise AbiFailure(AbiError.INVALID_POINTER, "the module exports no `memory`")
        name = _text(memory, name_ptr, name_len, MAX_NAME_BYTES, "the kernel name")
        version = _text(memory, version_ptr, version_len, MAX_VERSION_BYTES, "the version")
        loaded = self._loaded.setdefault(state.session, {})
        found = loaded.get((name, version))
        if found is not None:
            return found
        kernel = client.kernel(state.tenant, name, version, state.session.remaining_seconds())
        kernel_id = state.session.load_kernel(memory, kernel.ptx, kernel.entry, kernel.digest)
        if kernel_id >= 0:
            loaded[(name, version)] = kernel_id
        return kernel_id


def _text(memory: WasmMemory, pointer: int, length: int, max_bytes: int, what: str) -> str:
    if not 1 <= as_u32(length) <= max_bytes:
        raise AbiFailure(AbiError.INVALID_ARGS, f"{what} must be 1 to {max_bytes} bytes")
    start, size = check_region(pointer, length, memory.size(), what)
    try:
        return memory.read(start, size).decode("utf-8")
    except UnicodeDecodeError:
        raise AbiFailure(AbiError.INVALID_ARGS, f"{what} is not UTF-8") from None
