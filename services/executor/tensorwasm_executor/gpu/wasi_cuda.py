"""The `wasi:cuda/host@0.2.0` host module: five raw core-wasm imports on the engine's linker.

The functions are defined once, on the shared linker; each call finds the calling store's
GPU session through its `CudaHostState` (host_state.py). A store without a session (the
executor has no dispatcher) gets not_available (-1) from every function.
"""

from __future__ import annotations

from collections.abc import Callable

import wasmtime
from tensorwasm_common.gpu_abi import MODULE

from tensorwasm_executor.gpu.host_state import CudaHostState, guarded


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
    """Defines the five `wasi:cuda/host@0.2.0` functions, with their specified signatures."""
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
