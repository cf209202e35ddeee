"""Bit-exact typed calls and type introspection through wasmtime's C API (ctypes).

`wasmtime.Func.__call__` converts f32/f64 through Python floats (which quiets signalling
NaNs), and `wasmtime.ValType` aborts the process on v128 (`wasm_valtype_kind` panics).
This module avoids both: types are identified by `wasmtime_wasm_valtype_equal` against
canonical types, and calls go through `wasmtime_func_call_unchecked` with one
`wasmtime_val_raw_t` array that holds the arguments in and the results out. An
`ExportCall` prepares that once per export of a live instance (lookup, buffer, C
arguments, `struct` layouts), so a call creates no more Python objects than its results.
Failures are raised as wasmtime-py's own owning wrappers (`Trap`, `WasmtimeError`,
`ExitTrap`), which free the C objects when collected.
"""

from __future__ import annotations

import ctypes
import functools
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import wasmtime
import wasmtime._bindings
import wasmtime._func
from tensorwasm_common.errors import ExportNotFoundError
from wasmtime import _ffi as ffi

from tensorwasm_executor.errors import UnsupportedValueTypeError
from tensorwasm_executor.wasm.values import ValueType, WasmValue, from_guest

__all__ = [
    "EpochCallback", "ExportCall", "StoreContext", "call", "export_memory", "instantiate",
    "set_epoch_callback", "set_stdin_bytes", "signature_of", "take_host_exception",
]  # fmt: skip

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


def address_of(pointer: Any) -> int:
    """The address a ctypes pointer holds (0 for NULL), read from the pointer's own
    memory: `ctypes.cast(pointer, c_void_p)` would make the pointer and its `_objects`
    a reference cycle, left for the cyclic collector, on every call."""
    return ctypes.c_void_p.from_address(ctypes.addressof(pointer)).value or 0


class EpochCallback:
    """A store's epoch-deadline callback, and the ctypes object wasmtime calls.

    Keep this object alive until the store is closed: wasmtime holds a raw pointer to
    the ctypes thunk, and calling it after it was collected would crash the process.
    """

    def __init__(self, on_tick: Callable[[], str | None]) -> None:
        self._on_tick: Callable[[], str | None] | None = on_tick
        self.thunk: Any = _EPOCH_CALLBACK_TYPE(self._call)

    def release(self) -> None:
        """Drops the thunk and `on_tick` once the store is closed (the thunk refers back
        to this object: without this the pair is left to the cyclic collector)."""
        self.thunk = None
        self._on_tick = None

    def _call(self, context: Any, data: Any, delta: Any, kind: Any) -> int:
        # Runs on the guest's thread, inside the wasm call, each time the store's epoch
        # deadline is reached. Returning NULL with delta=1 resumes the guest for one
        # more tick; returning a new wasmtime_error_t (wasmtime takes ownership) makes
        # the call fail with that error.
        on_tick = self._on_tick
        try:
            stop = on_tick() if on_tick is not None else None
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


# wasmtime_func_call_unchecked as a function object of its own: every argument is a
# prepared ctypes object (no per-call conversion), and wasmtime-py's shared one keeps its
# argtypes. Like all of `ffi.dll`'s functions it releases the GIL while the guest runs.
_CALL_UNCHECKED: Any = ffi.dll["wasmtime_func_call_unchecked"]
_CALL_UNCHECKED.restype = ctypes.c_void_p
_CALL_UNCHECKED.argtypes = None
_ERROR_POINTER: Any = ctypes.POINTER(ffi.wasmtime_error_t)
_TRAP_POINTER: Any = ctypes.POINTER(ffi.wasm_trap_t)

# One `wasmtime_val_raw_t` (16 bytes, little-endian) per value type, as `struct` formats:
# i32/i64 signed, f32/f64 their raw bits, v128 its 16 bytes in memory order.
_SLOT_FORMATS = {
    ValueType.I32: "i12x", ValueType.I64: "q8x", ValueType.F32: "I12x",
    ValueType.F64: "Q8x", ValueType.V128: "16s",
}  # fmt: skip


@dataclass(frozen=True)
class _Layout:
    """How one signature's arguments and results sit in a `wasmtime_val_raw_t` array."""

    slots: int
    pack: Callable[..., None] | None  # Struct.pack_into(buffer, 0, *payloads)
    unpack: Callable[[Any], tuple[Any, ...]] | None  # Struct.unpack_from(buffer)
    results: tuple[ValueType, ...]


@functools.lru_cache(maxsize=512)
def _layout(params: tuple[ValueType, ...], results: tuple[ValueType, ...]) -> _Layout:
    def packer(types: tuple[ValueType, ...]) -> struct.Struct | None:
        try:
            formats = [_SLOT_FORMATS[kind] for kind in types]
        except KeyError as exc:
            raise UnsupportedValueTypeError(
                f"{exc.args[0].value} values cannot cross the executor boundary",
                metadata={"type": exc.args[0].value},
            ) from None
        return struct.Struct("<" + "".join(formats)) if formats else None

    arguments, returned = packer(params), packer(results)
    return _Layout(
        slots=max(len(params), len(results), 1),
        pack=None if arguments is None else arguments.pack_into,
        unpack=None if returned is None else returned.unpack_from,
        results=results,
    )


class _Frame:
    """One call's `wasmtime_val_raw_t` array, trap slot, and the C arguments naming them."""

    __slots__ = ("arguments", "buffer", "trap")

    def __init__(self, context: ctypes.c_void_p, func: ctypes.c_void_p, slots: int) -> None:
        self.buffer = (ffi.wasmtime_val_raw_t * slots)()
        self.trap = ctypes.c_void_p()
        self.arguments = (
            context, func, self.buffer, ctypes.c_size_t(slots),
            ctypes.c_void_p(ctypes.addressof(self.trap)),
        )  # fmt: skip


class ExportCall:
    """One function export of one live instance, ready to be called again and again.

    Everything that does not change between calls is done once: the export lookup, the
    store's context pointer, the C arguments of `wasmtime_func_call_unchecked`, the
    argument/result buffer and the `struct` layouts that fill and read it. A call packs
    the arguments, calls, and unpacks the results.

    The buffer is taken for the length of a call. A call that finds it taken (a host
    function calling back into this export, or another thread) runs on a buffer of its
    own, so no call ever sees another's values.

    Keep it only while its store is open: it checks the store before each call.
    """

    __slots__ = ("_busy", "_context", "_frame", "_func", "_layout", "_store", "export")

    def __init__(
        self,
        store: wasmtime.Store,
        instance: Any,
        export: str,
        params: tuple[ValueType, ...],
        results: tuple[ValueType, ...],
    ) -> None:
        """Looks `export` up in `instance` and prepares its calls.

        Args:
            store: the store that owns `instance`.
            instance: the raw instance (from `instantiate`).
            export: the function export's name.
            params, results: the export's signature (from `signature_of`).

        Raises:
            ExportNotFoundError: the instance has no function export of that name.
            UnsupportedValueTypeError: a reference type in the signature.
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
        self.export = export
        self._store = store
        self._layout = _layout(params, results)
        self._func = item.of.func  # a view into `item`, which it keeps alive
        self._context = ctypes.c_void_p(address_of(context))
        self._frame = self._new_frame()
        self._busy = threading.Lock()

    def _new_frame(self) -> _Frame:
        func = ctypes.c_void_p(ctypes.addressof(self._func))
        return _Frame(self._context, func, self._layout.slots)

    def __call__(self, args: Sequence[WasmValue]) -> tuple[WasmValue, ...]:
        """Calls the export with arguments of exactly its parameter types.

        Returns:
            The results, bit-exact.

        Raises:
            wasmtime.Trap: the guest trapped (ownership of the trap is taken).
            wasmtime.WasmtimeError: the call failed otherwise; `wasmtime.ExitTrap` for
                proc_exit.
            ValueError: the store was closed.
        """
        self._store._context()  # raises once the store is closed: the context is freed
        busy = self._busy
        if not busy.acquire(blocking=False):
            return self._run(self._new_frame(), args)
        try:
            return self._run(self._frame, args)
        finally:
            busy.release()

    def _run(self, frame: _Frame, args: Sequence[WasmValue]) -> tuple[WasmValue, ...]:
        layout = self._layout
        if layout.pack is not None:
            layout.pack(frame.buffer, 0, *[arg.payload for arg in args])
        error = _CALL_UNCHECKED(*frame.arguments)
        if error or frame.trap.value:
            _raise_call_failure(error, frame.trap)
        if layout.unpack is None:
            return ()
        return tuple(map(from_guest, layout.results, layout.unpack(frame.buffer)))


def _raise_call_failure(error: int | None, trap: ctypes.c_void_p) -> None:
    """Raises a failed call's error or trap, taking ownership (and clearing the slot)."""
    if error:
        raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(error, _ERROR_POINTER))
    address, trap.value = trap.value or 0, None
    raise wasmtime.Trap._from_ptr(ctypes.cast(address, _TRAP_POINTER))


# The per-call store settings, as function objects of their own (see _CALL_UNCHECKED).
_SET_EPOCH_DEADLINE: Any = ffi.dll["wasmtime_context_set_epoch_deadline"]
_SET_EPOCH_DEADLINE.restype = None
_SET_EPOCH_DEADLINE.argtypes = (ctypes.c_void_p, ctypes.c_uint64)
_SET_FUEL: Any = ffi.dll["wasmtime_context_set_fuel"]
_SET_FUEL.restype = ctypes.c_void_p
_SET_FUEL.argtypes = (ctypes.c_void_p, ctypes.c_uint64)


class StoreContext:
    """A store's context pointer, and the settings a call re-arms through it.

    `wasmtime.Store.set_epoch_deadline` and `set_fuel` go through two Python wrappers
    and a typed pointer conversion per call; these go straight to the C API. Like an
    `ExportCall`, it checks the store is still open first.
    """

    __slots__ = ("_context", "_store")

    def __init__(self, store: wasmtime.Store) -> None:
        self._store = store
        self._context = ctypes.c_void_p(address_of(store._context()))

    def set_epoch_deadline(self, ticks_after_current: int) -> None:
        """As `wasmtime.Store.set_epoch_deadline`."""
        self._store._context()  # raises once the store is closed
        _SET_EPOCH_DEADLINE(self._context, ticks_after_current)

    def set_fuel(self, fuel: int) -> None:
        """As `wasmtime.Store.set_fuel` (raises `wasmtime.WasmtimeError` without metering)."""
        self._store._context()
        error = _SET_FUEL(self._context, fuel)
        if error:
            raise wasmtime.WasmtimeError._from_ptr(ctypes.cast(error, _ERROR_POINTER))


def call(
    store: wasmtime.Store,
    instance: Any,
    export: str,
    results: Sequence[ValueType],
    args: Sequence[WasmValue],
) -> tuple[WasmValue, ...]:
    """Calls a function export once with already type-checked numeric/v128 arguments.

    A caller that calls the same export again keeps an `ExportCall` instead, which
    looks the export up and lays out its buffer only once.

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
    params = tuple(arg.type for arg in args)
    return ExportCall(store, instance, export, params, tuple(results))(args)


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
