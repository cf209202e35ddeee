"""A resident instance: one long-lived store and instance that keep their state across calls."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

import wasmtime

from tensorwasm_executor.errors import InstanceBusyError, ResidentGoneError
from tensorwasm_executor.wasm.call_store import CallLimits, CallStore
from tensorwasm_executor.wasm.engine import CompiledModule
from tensorwasm_executor.wasm.guest_channel import ChunkSink
from tensorwasm_executor.wasm.guest_io import OutputSink
from tensorwasm_executor.wasm.host_modules import HostState
from tensorwasm_executor.wasm.outcomes import Outcome
from tensorwasm_executor.wasm.values import WasmValue

T = TypeVar("T")


class Sandbox(Protocol):
    """What a resident instance uses of the sandbox that made it (`sandbox.Sandbox`)."""

    @property
    def epoch_tick_seconds(self) -> float: ...

    @property
    def fuel_metering(self) -> bool: ...

    def call_limits(
        self,
        timeout_seconds: float | None,
        max_output_bytes: int | None,
        fuel: int | None,
        max_memory_bytes: int | None,
    ) -> CallLimits: ...

    def activity(self) -> AbstractContextManager[None]: ...


class Resident:
    """A long-lived instance: one store and instance that keep their state across calls.

    Calls run one at a time (a second caller waits, within its own deadline). Every
    call re-arms the deadline, the fuel and fresh output captures. `terminate()` stops a
    running call within about one epoch tick and closes the store once it has returned.
    """

    def __init__(
        self,
        sandbox: Sandbox,
        module: CompiledModule,
        call_store: CallStore,
        *,
        guest_input: bytes = b"",
    ) -> None:
        self.module = module
        self._input = guest_input  # the instance's wasi:tensor input, for calls without one
        self._sandbox = sandbox
        self._tick = sandbox.epoch_tick_seconds  # read once: calls are the hot path
        self._call_store: CallStore | None = call_store
        self._lock = threading.Lock()
        self._terminated = threading.Event()

    @property
    def terminated(self) -> bool:
        """Whether `terminate()` was called."""
        return self._terminated.is_set()

    def call(
        self,
        export: str,
        args: Sequence[WasmValue],
        *,
        timeout_seconds: float | None = None,
        max_output_bytes: int | None = None,
        fuel: int | None = None,
        on_output: OutputSink | None = None,
        cancel: threading.Event | None = None,
        guest_input: bytes = b"",
        on_chunk: ChunkSink | None = None,
    ) -> Outcome:
        """Calls `export` on this instance; the arguments and limits are as `Sandbox.invoke`'s
        (an empty `guest_input` stages the instance's own).

        Raises:
            ResidentGoneError: the instance was terminated.
            ExportNotFoundError, UnsupportedValueTypeError, ArgumentMismatchError: bad call.
            InvalidArgumentError: a bad limit, or no free turn on the instance before the
                call's deadline (reason INSTANCE_BUSY).
        """
        sandbox = self._sandbox
        info = self.module.checked_export(export, args)
        limits = sandbox.call_limits(timeout_seconds, max_output_bytes, fuel, None)
        lock = self._lock
        # A free instance is taken at once; a timed acquire costs more even when it is free.
        if not lock.acquire(blocking=False) and not lock.acquire(timeout=limits.timeout_seconds):
            raise InstanceBusyError(
                "another call held the instance for the whole deadline",
                metadata={"export": export},
            )
        try:
            call_store = self._call_store
            if call_store is None or self._terminated.is_set():
                raise ResidentGoneError("the instance was terminated")
            events = (self._terminated,) if cancel is None else (self._terminated, cancel)
            with sandbox.activity():
                call_store.begin(
                    limits, self._tick, fuel_metering=sandbox.fuel_metering,
                    on_output=on_output, events=events,
                    guest_input=guest_input or self._input, on_chunk=on_chunk,
                )  # fmt: skip
                return call_store.outcome(*call_store.run(self.module, info, args))
        finally:
            lock.release()

    def between_calls(self, action: Callable[[wasmtime.Store, Any], T], timeout: float) -> T:
        """Runs `action(store, instance)` while no call runs on the instance.

        Raises:
            InstanceBusyError: no turn within `timeout` seconds.
            ResidentGoneError: the instance was terminated.
        """
        if not self._lock.acquire(timeout=timeout):
            raise InstanceBusyError("a call held the instance for the whole deadline")
        try:
            call_store = self._call_store
            if call_store is None or self._terminated.is_set() or call_store.instance is None:
                raise ResidentGoneError("the instance was terminated")
            return action(call_store.store, call_store.instance)
        finally:
            self._lock.release()

    @property
    def host_state(self) -> HostState | None:
        """The instance's host-module state (its `wasi:cuda` session), if any."""
        call_store = self._call_store
        return None if call_store is None else call_store.host_state

    def terminate(self) -> None:
        """Stops a running call and frees the store (once no call runs). Idempotent."""
        self._terminated.set()
        with self._lock:
            call_store, self._call_store = self._call_store, None
        if call_store is not None:
            call_store.close()
