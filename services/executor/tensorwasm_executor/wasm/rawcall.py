"""Bit-exact typed calls and type introspection through wasmtime's C API (ctypes).

`wasmtime.Func.__call__` converts f32/f64 through Python floats (which quiets signalling
NaNs), and `wasmtime.ValType` aborts the process on v128 (`wasm_valtype_kind` panics).
This module avoids both: types are identified by `wasmtime_wasm_valtype_equal` against
canonical types, and calls go through `wasmtime_func_call_unchecked` with one
`wasmtime_val_raw_t` array that holds the arguments in and the results out. Failures are
raised as wasmtime-py's own owning wrappers (`Trap`, `WasmtimeError`, `ExitTrap`), which
free the C objects when collected.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from typing import Any, cast

import wasmtime
import wasmtime._bindings
import wasmtime._func
from tensorwasm_common.errors import ExportNotFoundError
from wasmtime import _ffi as ffi

from tensorwasm_executor.wasm.values import ValueType, WasmValue

__all__ = [
    "EpochCallback", "call", "export_memory", "instantiate", "set_epoch_callback",
    "set_stdin_bytes", "signature_of", "take_host_exception",
]  # fmt: skip

_RAW_SIZE = ctypes.sizeof(ffi.wasmtime_val_raw_t)
_U32, _U64 = 1 << 32, 1 << 64

# Canonical wasm_valtype_t pointers, owned by this module for the process lifetime.
_CANONICAL: tuple[tuple[ValueType, Any], ...] = (
    (ValueType.I32, ffi.wasm_valtype_new(0)),
    (ValueType.I64, ffi.wasm_valtype_new(1)),
    (ValueType.F32, ffi.wasm_valtype_new(2)),
    (ValueType.F64, ffi.wasm_valtype_new(3)),
    (ValueType.V128, ffi.wasmtime_wasm_valtype_v128()),
    (ValueType.EXTERNREF, ffi.wasm_valtype_new(128)),
    (ValueType.FUNCREF, ffi.wasm_valtype_new(129)),
)


def _value_type(valtype: wasmtime.ValType) -> ValueType | None:
    """Identifies a value type without `wasm_valtype_kind` (None: not representable)."""
    ptr = valtype.ptr()
    for kind, canonical in _CANONICAL:
        if ffi.wasmtime_wasm_valtype_equal(ptr, canonical):
            return kind
    return None


def signature_of(
    functype: wasmtime.FuncType,
) -> tuple[tuple[ValueType, ...], tuple[ValueType, ...]] | None:
    """Returns (params, results) of a function type, or None if a type is not representable.

    Args:
        functype: the export's type, from `wasmtime.Module.exports`.

    Returns:
        The parameter and result types; None when one is e.g. a typed GC reference.
    """
    params = [_value_type(t) for t in functype.params]
    results = [_value_type(t) for t in functype.results]
    if any(t is None for t in params) or any(t is None for t in results):
        return None
    return tuple(t for t in params if t), tuple(t for t in results if t)


def _store(slot: Any, address: int, value: WasmValue) -> None:
    payload = value.payload
    if isinstance(payload, bytes):  # v128, 16 bytes in memory order
        ctypes.memmove(address, payload, 16)
    elif value.type in (ValueType.I32, ValueType.F32):
        slot.i32 = payload - _U32 if payload >= 1 << 31 else payload
    else:
        slot.i64 = payload - _U64 if payload >= 1 << 63 else payload


def _load(slot: Any, address: int, kind: ValueType) -> WasmValue:
    if kind is ValueType.I32:
        return WasmValue(kind, int(slot.i32))
    if kind is ValueType.I64:
        return WasmValue(kind, int(slot.i64))
    if kind is ValueType.F32:
        return WasmValue(kind, int(slot.i32) & (_U32 - 1))
    if kind is ValueType.F64:
        return WasmValue(kind, int(slot.i64) & (_U64 - 1))
    return WasmValue(kind, ctypes.string_at(address, 16))


def set_stdin_bytes(wasi: wasmtime.WasiConfig, data: bytes) -> None:
    """Makes `data` the guest's stdin (wasmtime-py only offers a file path for stdin).

    Args:
        wasi: the per-invocation WASI configuration.
        data: the stdin bytes, copied into wasmtime.
    """
    vec = ffi.wasm_byte_vec_t()
    buffer = (ffi.wasm_byte_t * len(data)).from_buffer_copy(data)
    ffi.wasm_byte_vec_new(ctypes.byref(vec), len(data), buffer)
    ffi.wasi_config_set_stdin_bytes(wasi.ptr(), ctypes.byref(vec))  # moves the bytes out
    ffi.wasm_byte_vec_delete(ctypes.byref(vec))  # frees nothing if emptied, else the copy


# The C types of `wasmtime_store_epoch_deadline_callback`'s callback and finalizer, exactly
# as wasmtime-py declares them (ctypes rejects a function pointer of another type).
_EPOCH_ARGTYPES: Any = wasmtime._bindings._wasmtime_store_epoch_deadline_callback.argtypes
_EPOCH_CALLBACK_TYPE: Any = _EPOCH_ARGTYPES[1]
_NO_FINALIZER = _EPOCH_ARGTYPES[3]()  # a NULL function pointer
# `wasmtime_update_deadline_kind_t` (the bindings declare the type, not the values).
WASMTIME_UPDATE_DEADLINE_CONTINUE = 0


class EpochCallback:
    """A store's epoch-deadline callback, and the ctypes object wasmtime calls.

    Keep this object alive until the store is closed: wasmtime holds a raw pointer to
    the ctypes thunk, and calling it after it was collected would crash the process.
    """

    def __init__(self, on_tick: Callable[[], str | None]) -> None:
        self._on_tick = on_tick
        self.thunk = _EPOCH_CALLBACK_TYPE(self._call)

    def _call(self, context: Any, data: Any, delta: Any, kind: Any) -> int:
        # Runs on the guest's thread, inside the wasm call, each time the store's epoch
        # deadline is reached. Returning NULL with delta=1 resumes the guest for one
        # more tick; returning a new wasmtime_error_t (wasmtime takes ownership) makes
        # the call fail with that error.
        try:
            stop = self._on_tick()
        except BaseException as exc:  # never let an exception cross the C boundary
            stop = f"epoch callback failed: {type(exc).__name__}"
        if stop is None:
            delta[0] = 1
            kind[0] = WASMTIME_UPDATE_DEADLINE_CONTINUE
            return 0
        error = ffi.wasmtime_error_new(stop.encode("utf-8", "replace"))
        return ctypes.cast(error, ctypes.c_void_p).value or 0


def set_epoch_callback(store: wasmtime.Store, on_tick: Callable[[], str | None]) -> EpochCallback:
    """Calls `on_tick` at every epoch tick while `store` runs wasm, instead of trapping.

    The store's epoch deadline must be set to 1 (one tick from now) for the callback to
    run at every tick. `on_tick` returns None to let the guest run one more tick, or a
    message to stop it: the wasm call then raises `wasmtime.WasmtimeError` with that
    message in its cause.

    Args:
        store: a store of an engine with epoch interruption on.
        on_tick: called on the guest's thread; it must be quick and must not touch the store.

    Returns:
        The callback, which the caller must keep referenced until `store` is closed.
    """
    callback = EpochCallback(on_tick)
    ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), callback.thunk, None, _NO_FINALIZER)
    return callback


def _raise_failure(error: Any, trap: Any) -> None:
    if error:
        raise wasmtime.WasmtimeError._from_ptr(error)
    if trap:
        raise wasmtime.Trap._from_ptr(trap)


def take_host_exception() -> BaseException | None:
    """Takes (and clears) the exception a Python host function raised, if any.

    wasmtime-py's trampoline parks it in a process-wide slot and returns a
    "python exception" trap; clearing it keeps it from surfacing in an unrelated call.
    """
    exception: BaseException | None = wasmtime._func.LAST_EXCEPTION
    wasmtime._func.LAST_EXCEPTION = None
    return exception


def instantiate(pre: wasmtime.InstancePre, store: wasmtime.Store) -> Any:
    """Instantiates a pre-linked module (running its start function) into `store`.

    Unlike `InstancePre.instantiate`, a Python host exception is not re-raised here.

    Returns:
        The raw `wasmtime_instance_t` to pass to `call`.

    Raises:
        wasmtime.Trap, wasmtime.WasmtimeError: as for `call`.
    """
    instance = ffi.wasmtime_instance_t()
    trap = ctypes.POINTER(ffi.wasm_trap_t)()
    error = ffi.wasmtime_instance_pre_instantiate(
        pre.ptr(), store._context(), ctypes.byref(instance), ctypes.byref(trap)
    )
    _raise_failure(error, trap)
    return instance


def call(
    store: wasmtime.Store,
    instance: Any,
    export: str,
    results: Sequence[ValueType],
    args: Sequence[WasmValue],
) -> tuple[WasmValue, ...]:
    """Calls a function export with already type-checked numeric/v128 arguments.

    Args:
        store: the store that owns `instance`.
        instance: the raw instance (from `instantiate`) to call into.
        export: the function export's name.
        results: the export's result types (from its signature).
        args: arguments matching the export's parameter types exactly.

    Returns:
        The results, bit-exact.

    Raises:
        wasmtime.Trap: the guest trapped (ownership of the trap is taken).
        wasmtime.WasmtimeError: the call failed otherwise; `wasmtime.ExitTrap` for proc_exit.
        ExportNotFoundError: the instance has no function export of that name.
    """
    context = store._context()
    name = export.encode("utf-8")
    item = ffi.wasmtime_extern_t()
    found = ffi.wasmtime_instance_export_get(
        context, ctypes.byref(instance), ctypes.create_string_buffer(name),
        len(name), ctypes.byref(item),
    )  # fmt: skip
    if not found or cast(int, item.kind) != ffi.WASMTIME_EXTERN_FUNC.value:
        raise ExportNotFoundError(f"no function export {export!r}", metadata={"export": export})
    count = max(len(args), len(results), 1)
    values = (ffi.wasmtime_val_raw_t * count)()
    base = ctypes.addressof(values)
    for index, value in enumerate(args):
        _store(values[index], base + index * _RAW_SIZE, value)
    trap = ctypes.POINTER(ffi.wasm_trap_t)()
    error = ffi.wasmtime_func_call_unchecked(
        context, ctypes.byref(item.of.func), values, count, ctypes.byref(trap)
    )
    _raise_failure(error, trap)
    return tuple(
        _load(values[index], base + index * _RAW_SIZE, kind) for index, kind in enumerate(results)
    )


def export_memory(
    store: wasmtime.Store, instance: Any, name: str = "memory"
) -> wasmtime.Memory | None:
    """The instance's memory export `name` (None: no memory export of that name)."""
    encoded = name.encode("utf-8")
    item = ffi.wasmtime_extern_t()
    found = ffi.wasmtime_instance_export_get(
        store._context(), ctypes.byref(instance), ctypes.create_string_buffer(encoded),
        len(encoded), ctypes.byref(item),
    )  # fmt: skip
    if not found or cast(int, item.kind) != ffi.WASMTIME_EXTERN_MEMORY.value:
        return None
    return wasmtime.Memory._from_raw(item.of.memory)
