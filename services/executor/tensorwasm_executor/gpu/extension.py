"""The `tensorwasm:gpu/host@0.1.0` extension module: device-resident buffers and GPU time.

Our own import module, so that `wasi:cuda/host@0.2.0` stays exactly as specified
(docs/ARCHITECTURE.md). Its functions share the store's `wasi:cuda` session (kernels,
queue, `last_error`) and its codes (-1 … -10); they add none. `define_function` is how
every extension function is put on the linker (other files define more functions in the
same module with it):

- `tw_gpu_buffer_alloc(size_bytes: i64) -> i32`: a handle >= 1, or -9 (size < 1),
  -6 (the tenant's quota, the device, or 1024 buffers per instance). A round trip.
- `tw_gpu_buffer_free(handle: i32) -> i32`: 0 (queued), -9 (not this instance's buffer).
- `tw_gpu_buffer_write(handle: i32, offset: i64, src_ptr: i32, len: i32) -> i32`: 0 (the
  bytes are taken now, the copy is queued), -9, -2 (outside the buffer or memory).
- `tw_gpu_buffer_read(handle: i32, offset: i64, dst_ptr: i32, len: i32) -> i32`: 0 once
  the bytes are in linear memory; -9, -2, or (like sync) a queued command's failure.
- `tw_gpu_time_ns() -> i64`: GPU time of this instance's kernels so far, in ns.
- `tw_gpu_tenant_time_ns() -> i64`: GPU time of all the tenant's kernels, in ns.

A launch names a device buffer with argv record tag 0x08: u32 handle + u32 byte offset.
Buffers belong to the instance that allocated them (handles are per session) and are
freed when it ends; their bytes count against the tenant's GPU memory quota meanwhile.
A read and both time queries run what is queued first (a device-to-host copy flushes).
"""

from __future__ import annotations

import wasmtime
from tensorwasm_common.gpu_abi import (
    EXT_MODULE,
    MAX_DEVICE_BUFFERS_PER_INSTANCE,
    AbiError,
    AbiFailure,
)
from tensorwasm_common.gpu_batch import AllocBuffer, FreeBuffer, ReadBuffer, WriteBuffer

from tensorwasm_executor.gpu.abi import as_u32, check_region
from tensorwasm_executor.gpu.host_state import CudaHostState, HostBody, WasmMemory, guarded

_NS_PER_SECOND = 1_000_000_000


def define_function(
    linker: wasmtime.Linker,
    name: str,
    params: list[wasmtime.ValType],
    result: wasmtime.ValType,
    body: HostBody,
) -> None:
    """Defines one function of `tensorwasm:gpu/host@0.1.0` on the engine's linker.

    Args:
        linker: The engine's linker.
        name: The import name.
        params: The wasm parameter types.
        result: The wasm result type (an ABI code or a value; negative: an error).
        body: `body(state, caller, *args) -> int`, run with the store's `CudaHostState`;
            it returns ABI codes and records failures with `state.session.fail`. Without
            a session the function answers -1; an unexpected exception answers -7.
    """
    linker.define_func(
        EXT_MODULE, name, wasmtime.FuncType(params, [result]), guarded(name, body),
        access_caller=True,
    )  # fmt: skip


def define(linker: wasmtime.Linker) -> None:
    """Defines the device-buffer and GPU-time functions."""
    i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
    define_function(linker, "tw_gpu_buffer_alloc", [i64], i32, _alloc)
    define_function(linker, "tw_gpu_buffer_free", [i32], i32, _free)
    define_function(linker, "tw_gpu_buffer_write", [i32, i64, i32, i32], i32, _write)
    define_function(linker, "tw_gpu_buffer_read", [i32, i64, i32, i32], i32, _read)
    define_function(linker, "tw_gpu_time_ns", [], i64, _time_ns)
    define_function(linker, "tw_gpu_tenant_time_ns", [], i64, _tenant_time_ns)


def _alloc(state: CudaHostState, caller: wasmtime.Caller, size_bytes: int) -> int:
    session = state.session
    try:
        if size_bytes < 1:
            raise AbiFailure(AbiError.INVALID_ARGS, f"a device buffer of {size_bytes} bytes")
        if len(session.device_buffers) >= MAX_DEVICE_BUFFERS_PER_INSTANCE:
            raise AbiFailure(
                AbiError.QUOTA_EXCEEDED,
                f"the instance holds {MAX_DEVICE_BUFFERS_PER_INSTANCE} device buffers already",
            )
        # Handles count up and are never reused by an instance: a stale one fails.
        handle = session.device_handles_issued + 1
        session.device_handles_issued = handle
        result = session.request(state.memory(caller), AllocBuffer(handle, size_bytes))
        if result.code != 0:
            raise AbiFailure(_code(result.code), result.message)
    except AbiFailure as failure:
        return session.fail(failure)
    session.device_buffers[handle] = size_bytes
    return handle


def _free(state: CudaHostState, caller: wasmtime.Caller, handle: int) -> int:
    session = state.session
    try:
        _size(state, handle)
        session.enqueue(state.memory(caller), FreeBuffer(handle))
    except AbiFailure as failure:
        return session.fail(failure)
    del session.device_buffers[handle]
    return 0


def _copy_range(
    state: CudaHostState,
    caller: wasmtime.Caller,
    args: tuple[int, ...],
    *,
    what: str,
) -> tuple[WasmMemory, int, int]:
    """Checks a copy between a device buffer's range and linear memory: `args` are the
    guest's (handle, offset in the buffer, pointer in memory, length).

    Returns:
        The guest memory, and the checked start and size in it.

    Raises:
        AbiFailure: the buffer range or the memory range is invalid, or there is no memory.
    """
    handle, offset, pointer, length = args
    memory = state.memory(caller)
    _check_buffer_range(state, handle, offset, as_u32(length))
    if memory is None:
        raise AbiFailure(AbiError.INVALID_POINTER, "the module exports no `memory`")
    start, size = check_region(pointer, length, memory.size(), f"the {what}")
    return memory, start, size


def _write(state: CudaHostState, caller: wasmtime.Caller, *args: int) -> int:
    handle, offset = args[0], args[1]
    session = state.session
    try:
        memory, start, size = _copy_range(state, caller, args, what="source")
        session.enqueue(memory, WriteBuffer(handle, offset, memory.read(start, size)))
    except AbiFailure as failure:
        return session.fail(failure)
    return 0


def _read(state: CudaHostState, caller: wasmtime.Caller, *args: int) -> int:
    handle, offset = args[0], args[1]
    session = state.session
    try:
        memory, start, size = _copy_range(state, caller, args, what="destination")
        result = session.request(memory, ReadBuffer(handle, offset, size))
        if result.code != 0:
            raise AbiFailure(_code(result.code), result.message)
        if len(result.data) != size:
            raise AbiFailure(AbiError.INTERNAL, "the dispatcher read the wrong number of bytes")
        memory.write(start, result.data)
    except AbiFailure as failure:
        return session.fail(failure)
    # Like wasi_cuda_sync, the read reports a queued command's failure (the data is in).
    return session.sync(state.memory(caller))


def _time_ns(state: CudaHostState, caller: wasmtime.Caller) -> int:
    state.session.flush(state.memory(caller), even_if_empty=False)
    return round(state.session.kernel_seconds * _NS_PER_SECOND)


def _tenant_time_ns(state: CudaHostState, caller: wasmtime.Caller) -> int:
    session = state.session
    session.flush(state.memory(caller), even_if_empty=True)  # the reply carries it
    return round(session.tenant_kernel_seconds * _NS_PER_SECOND)


def _size(state: CudaHostState, handle: int) -> int:
    size = state.session.device_buffers.get(handle)
    if size is None:
        raise AbiFailure(AbiError.INVALID_ARGS, f"this instance holds no device buffer {handle}")
    return size


def _check_buffer_range(state: CudaHostState, handle: int, offset: int, length: int) -> None:
    size = _size(state, handle)
    if offset < 0 or offset + length > size:
        raise AbiFailure(
            AbiError.INVALID_POINTER,
            f"bytes [{offset}, {offset + length}) are outside device buffer {handle} "
            f"({size} bytes)",
        )


def _code(code: int) -> AbiError:
    try:
        return AbiError(code)
    except ValueError:
        return AbiError.INTERNAL
