"""The wasmtime sandbox: one engine, a compiled-module LRU, and isolated per-call invocations.

The public entry point of the sandbox: the parts live in `engine` (engine, linker, compiled
modules), `host_modules`, `guest_io` (WASI options, output capture), `outcomes`, `call_store`
(one store and its call) and `resident` (long-lived instances), and are re-exported here.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import wasmtime
from cachetools import LRUCache
from tensorwasm_common.errors import InvalidArgumentError, InvalidWasmError, UnavailableError

from tensorwasm_executor.errors import FuelUnsupportedError, InstanceBusyError, ResidentGoneError
from tensorwasm_executor.wasm import cap_watch
from tensorwasm_executor.wasm.call_store import PREEMPTED, CallLimits, CallStore, PreemptedError
from tensorwasm_executor.wasm.engine import (
    ENGINE_FLAGS,
    CompiledModule,
    ExportInfo,
    link,
    new_engine,
)
from tensorwasm_executor.wasm.guest_channel import ChunkSink
from tensorwasm_executor.wasm.guest_io import NO_WASI_OPTIONS, OutputSink, WasiOptions
from tensorwasm_executor.wasm.host_modules import HostModule, HostState, current_host_state
from tensorwasm_executor.wasm.instance_image import InstanceImage
from tensorwasm_executor.wasm.outcomes import CANCELLED, TRAP_CODES, Failure, Outcome
from tensorwasm_executor.wasm.resident import Resident
from tensorwasm_executor.wasm.values import WasmValue

__all__ = [
    "ENGINE_FLAGS", "NO_WASI_OPTIONS", "TRAP_CODES", "CompiledModule", "ExportInfo", "Failure",
    "HostModule", "HostState", "InstanceBusyError", "Outcome", "OutputSink", "Resident",
    "ResidentGoneError", "Sandbox", "WasiOptions", "current_host_state",
]  # fmt: skip


_NO_LIMITS_ASKED = (None, None, None, None)
# Stores made ahead per memory cap (see Sandbox.tidy): one call on the event loop at a
# time takes them, so two cover a call and the one that follows before the next tidy.
READY_STORES = 2


class _CallsInFlight:
    """The sandbox's count of calls in flight, entered once per call (`Sandbox.activity`).

    A reusable context manager object rather than a generator one: it is on every
    call's path, and a resident call is meant to cost no more than wasmtime-py's own.
    """

    __slots__ = ("_lock", "_stop", "count")

    def __init__(self, lock: threading.Lock, stop: threading.Event) -> None:
        self._lock = lock
        self._stop = stop
        self.count = 0

    def __enter__(self) -> None:
        with self._lock:
            if self._stop.is_set():
                raise UnavailableError("the sandbox is closed")
            self.count += 1

    def __exit__(self, *exc_info: object) -> None:
        with self._lock:
            self.count -= 1


class Sandbox:
    """Compiles modules once and runs each invocation in a fresh store and instance."""

    def __init__(
        self,
        *,
        default_timeout_seconds: float = 10.0,
        max_output_bytes: int = 1 << 20,
        epoch_tick_seconds: float = 0.01,
        module_cache_entries: int = 256,
        max_memory_bytes: int = 256 << 20,
        max_table_elements: int = 100_000,
        fuel_metering: bool = False,
        host_modules: Sequence[HostModule] = (),
    ) -> None:
        if default_timeout_seconds <= 0 or epoch_tick_seconds <= 0:
            raise ValueError("timeouts and the epoch tick must be positive")
        if max_output_bytes < 0 or module_cache_entries < 1:
            raise ValueError("max_output_bytes must be >= 0 and module_cache_entries >= 1")
        self._timeout = default_timeout_seconds
        self._max_output = max_output_bytes
        self._tick = epoch_tick_seconds
        # Per-store caps: a memory.grow or table.grow bomb gets -1, not the host's memory.
        self._max_memory = max_memory_bytes
        self._max_table_elements = max_table_elements
        # Fuel metering costs every guest some speed, so it is an engine-wide opt-in.
        flags = {**ENGINE_FLAGS, "consume_fuel": fuel_metering}
        self.fuel_metering = fuel_metering
        self._engine, self._linker, self._fingerprint = new_engine(flags, host_modules)
        self._cache: LRUCache[str, CompiledModule] = LRUCache(maxsize=module_cache_entries)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # Invocations in flight; the ticker outlives close() until none is.
        self._in_flight = _CallsInFlight(self._lock, self._stop)
        # The limits of a call that sets none of its own (the resident hot path's), once known.
        self._default_limits: CallLimits | None = None
        # Stores made ahead for plain fresh calls (no stdin, WASI options or host state),
        # by memory cap, and the stores of calls that left closing them to `tidy`.
        self._ready: dict[int, deque[CallStore]] = {}
        self._ready_for = -1  # the memory cap of the last plain call that left its store
        self._retired: deque[CallStore] = deque()
        self._ticker = threading.Thread(
            target=self._run_ticker, name="wasm-epoch-ticker", daemon=True
        )
        self._ticker.start()

    def _run_ticker(self) -> None:
        while not (self._stop.is_set() and self._in_flight.count == 0):
            if self._stop.is_set():  # closing: tick on for the calls still in flight
                time.sleep(self._tick)
            else:  # woken at once by close(), which then need not wait out a tick
                self._stop.wait(self._tick)
            self._engine.increment_epoch()

    @property
    def engine_fingerprint(self) -> str:
        """A hex digest of the wasmtime version, the engine flags and the machine."""
        return self._fingerprint

    @property
    def engine(self) -> wasmtime.Engine:
        """The engine every module of this sandbox is compiled for."""
        return self._engine

    @property
    def epoch_tick_seconds(self) -> float:
        """The period of the epoch ticker, the granularity of deadlines."""
        return self._tick

    def compile(self, digest: str, wasm: bytes, *, cache_key: str | None = None) -> CompiledModule:
        """Validates, compiles and caches a module under `digest` (which is not re-checked).

        Args:
            digest: the content digest the caller computed over `wasm`.
            wasm: the module's binary bytes (text format is rejected).
            cache_key: the cache entry, when not `digest` (a rewritten copy of the module
                `digest` names, cached beside it).

        Returns:
            The cached module when `digest` is known, else the newly compiled one.

        Raises:
            InvalidWasmError: the bytes do not validate (wasmtime's message).
            UnsatisfiedImportError: an import is neither WASI preview 1 nor a host module.
        """
        cached = self.lookup(cache_key or digest)
        if cached is not None:
            return cached
        try:
            wasmtime.Module.validate(self._engine, wasm)
            # Grows counted for the outcome's cap flags; a module it cannot rewrite as is.
            module = wasmtime.Module(self._engine, cap_watch.instrument(wasm) or wasm)
        except wasmtime.WasmtimeError as exc:
            raise InvalidWasmError(str(exc), metadata={"digest": digest}) from None
        return self._install(digest, module, len(wasm), cache_key)

    def load_artifact(self, digest: str, path: Path) -> CompiledModule:
        """Loads a module this engine compiled and serialized earlier (`serialize`), from a
        trusted local file, memory-mapped by `Module.deserialize_file`, and caches it.

        Only for files this executor wrote: wasmtime trusts serialized code. A file of
        another engine fingerprint (wasmtime version, flags) is refused by wasmtime.

        Raises:
            InvalidWasmError: the file is not an artifact of this engine.
            UnsatisfiedImportError: as for `compile`.
        """
        cached = self.lookup(digest)
        if cached is not None:
            return cached
        try:
            module = wasmtime.Module.deserialize_file(self._engine, str(path))
        except wasmtime.WasmtimeError as exc:
            raise InvalidWasmError(str(exc), metadata={"digest": digest}) from None
        return self._install(digest, module, path.stat().st_size)

    def _install(
        self, digest: str, module: wasmtime.Module, size: int, cache_key: str | None = None
    ) -> CompiledModule:
        """Resolves imports once (InstancePre), reads the export signatures, caches."""
        compiled = link(self._engine, self._linker, digest, module, size)
        with self._lock:
            # One compiled meanwhile by another thread wins; either is now most recently used.
            compiled = self._cache.setdefault(cache_key or digest, compiled)
        return compiled

    def lookup(self, digest: str) -> CompiledModule | None:
        """Returns the cached module for `digest` (marking it recently used), or None."""
        with self._lock:
            return self._cache.get(digest)

    def invoke(
        self,
        module: CompiledModule,
        export: str,
        args: Sequence[WasmValue],
        *,
        stdin: bytes = b"",
        timeout_seconds: float | None = None,
        max_output_bytes: int | None = None,
        fuel: int | None = None,
        max_memory_bytes: int | None = None,
        on_output: OutputSink | None = None,
        cancel: threading.Event | None = None,
        wasi: WasiOptions = NO_WASI_OPTIONS,
        host_state: HostState | None = None,
        image: InstanceImage | None = None,
        guest_input: bytes = b"",
        on_chunk: ChunkSink | None = None,
        preempt_after: float | None = None,
        defer_close: bool = False,
    ) -> Outcome:
        """Runs `export` in a fresh store and instance of `module`.

        A `proc_exit(0)` from an export without results (e.g. `_start`) is a success
        with no results, as under `wasmtime run`; any other proc_exit is a PROC_EXIT
        failure. Guest traps and the deadline are failures in the Outcome, not raised.

        Streaming: with `on_output`, guest output is passed to it as the guest writes it
        (up to the cap; later bytes are dropped and the truncation flag is set) and the
        Outcome's stdout/stderr are empty. With `cancel`, setting the event stops the
        guest within about one epoch tick, even in a tight loop, with a CANCELLED
        failure; the deadline is then checked at every tick against the wall clock.

        Args:
            module: a module compiled by this sandbox.
            export: the function export to call.
            args: arguments, checked against the export's signature.
            stdin: the guest's WASI stdin.
            timeout_seconds: wall-clock budget (instantiation included), rounded up to ticks.
            max_output_bytes: cap on each of stdout and stderr.
            fuel: instruction budget (needs `fuel_metering`); None means unmetered.
            max_memory_bytes: linear-memory cap for this call, at most the sandbox's cap.
            on_output: receives ("stdout" | "stderr", bytes) on the guest's thread, in
                the order written; an exception it raises is logged and ignored.
            cancel: an event another thread may set to stop the call.
            wasi: argv, environment and the read-only directory.
            host_state: the store's host-module state (closed with the store); the
                store's only call is final for it.
            image: a pre-initialised image of `module`, written into the instance
                before the call (init is not run again).
            guest_input: the bytes the guest reads through `wasi:tensor` read_input.
            on_chunk: receives each chunk the guest emits (`wasi:tensor` emit_chunk) on
                the guest's thread, and returns False once its consumer is gone; without
                it the chunks are collected into the Outcome's `chunks`.
            preempt_after: seconds of the thread's CPU time after which the call is
                stopped at the next epoch tick and `PreemptedError` raised, so that the
                caller can run it again elsewhere (the stopped attempt leaves nothing
                behind but what its callbacks saw).
            defer_close: leave closing the call's store to the next `tidy` (which the
                caller is to run soon), and have `tidy` make stores ahead for calls
                like this one: for a caller with idle time after answering.

        Returns:
            The Outcome: results or a Failure, captured output, chunks and guest time.

        Raises:
            ExportNotFoundError, UnsupportedValueTypeError, ArgumentMismatchError: bad call.
            InvalidArgumentError: the timeout is not a positive finite number, or fuel
                was asked for without fuel metering.
            UnavailableError: the sandbox is closed.
            PreemptedError: the call ran past `preempt_after`.
        """
        self._own(module)
        info = module.checked_export(export, args)
        if preempt_after is not None and cancel is None:
            cancel = threading.Event()  # a watched store: its epoch callback preempts
        limits = self.call_limits(timeout_seconds, max_output_bytes, fuel, max_memory_bytes)
        plain = cancel is not None and host_state is None and not stdin and wasi == NO_WASI_OPTIONS
        with self.activity():
            call_store = self._take_ready(limits.memory_bytes) if plain else None
            if call_store is None:
                call_store = CallStore(
                    self._engine, stdin=stdin, wasi=wasi, memory_bytes=limits.memory_bytes,
                    table_elements=self._max_table_elements, watched=cancel is not None,
                    host_state=host_state, final_calls=True,
                )  # fmt: skip
            try:
                events = () if cancel is None else (cancel,)
                call_store.begin(
                    limits, self._tick, fuel_metering=self.fuel_metering,
                    on_output=on_output, events=events, guest_input=guest_input,
                    on_chunk=on_chunk, preempt_after=preempt_after,
                )  # fmt: skip
                if cancel is not None and cancel.is_set():
                    return call_store.outcome(None, CANCELLED, 0.0)
                ran = call_store.run(module, info, args, image)
                if call_store.watch is not None and call_store.watch.stopped == PREEMPTED:
                    raise PreemptedError(ran[2])
                return call_store.outcome(*ran)
            finally:
                if defer_close:
                    self._retired.append(call_store)
                    if plain:
                        self._ready_for = limits.memory_bytes
                else:
                    call_store.close()

    def _take_ready(self, memory_bytes: int) -> CallStore | None:
        """A store made ahead for a plain call with this memory cap, or None."""
        ready = self._ready.get(memory_bytes)
        return None if ready is None else self._take_ready_from(ready)

    @staticmethod
    def _take_ready_from(ready: deque[CallStore]) -> CallStore | None:
        try:
            return ready.popleft()
        except IndexError:  # none, or taken meanwhile by another thread
            return None

    def _plain_store(self, memory_bytes: int) -> CallStore:
        """A store as `invoke` makes for a plain call: no stdin, no WASI options, no host
        state, watched (its epoch callback decides at each tick), each call final."""
        return CallStore(
            self._engine, stdin=b"", wasi=NO_WASI_OPTIONS, memory_bytes=memory_bytes,
            table_elements=self._max_table_elements, watched=True, final_calls=True,
        )  # fmt: skip

    @property
    def ready_stores(self) -> int:
        """How many stores made ahead are waiting for a plain call."""
        return sum(len(ready) for ready in self._ready.values())

    def _close_ready(self) -> None:
        for ready in self._ready.values():
            while (store := self._take_ready_from(ready)) is not None:
                store.close()

    def tidy(self) -> None:
        """Closes the stores calls left with `defer_close`, and makes stores ahead (up to
        READY_STORES) for plain calls with the memory cap of the last such call.

        A store made ahead has never run anything, so a call that takes one gets the
        same fresh store it would otherwise have made: only the work moves, out of the
        call and into the caller's idle time. Closing a store is moved the same way.
        """
        while self._retired:
            try:
                store = self._retired.popleft()
            except IndexError:
                break
            store.close()
        memory_bytes = self._ready_for
        if memory_bytes < 0 or self._stop.is_set():
            return
        ready = self._ready.get(memory_bytes)
        if ready is None:  # stores are kept for the last cap only
            self._close_ready()
            self._ready = {memory_bytes: (ready := deque())}
        while len(ready) < READY_STORES:
            ready.append(self._plain_store(memory_bytes))

    def spawn(
        self,
        module: CompiledModule,
        *,
        stdin: bytes = b"",
        wasi: WasiOptions = NO_WASI_OPTIONS,
        timeout_seconds: float | None = None,
        max_output_bytes: int | None = None,
        max_memory_bytes: int | None = None,
        host_state: HostState | None = None,
        image: InstanceImage | None = None,
        guest_input: bytes = b"",
    ) -> tuple[Resident | None, Outcome]:
        """Instantiates `module` into a long-lived store (running its start function).

        Args:
            module: a module compiled by this sandbox.
            stdin: the instance's WASI stdin, for its whole life.
            wasi: argv, environment and the read-only directory.
            timeout_seconds: the deadline of instantiation (start function included).
            max_output_bytes: cap on each of stdout and stderr of the start function.
            max_memory_bytes: the linear-memory cap for the instance's whole life.
            host_state: the instance's host-module state, for its whole life (closed
                when the instance is terminated).
            image: a pre-initialised image of `module`, written into the instance once
                it is instantiated.
            guest_input: the instance's `wasi:tensor` input: the start function's, and
                that of every call that stages none of its own.

        Returns:
            (the Resident, the instantiation's Outcome), or (None, the Outcome with the
            failure) when instantiation trapped, exited or ran out of time.

        Raises:
            InvalidArgumentError: a bad limit.
            UnavailableError: the sandbox is closed.
        """
        self._own(module)
        limits = self.call_limits(timeout_seconds, max_output_bytes, None, max_memory_bytes)
        with self.activity():
            call_store = CallStore(
                self._engine, stdin=stdin, wasi=wasi, memory_bytes=limits.memory_bytes,
                table_elements=self._max_table_elements, watched=True, host_state=host_state,
            )  # fmt: skip
            call_store.begin(
                limits, self._tick, fuel_metering=self.fuel_metering, on_output=None,
                events=(), guest_input=guest_input,
            )  # fmt: skip
            outcome = call_store.outcome(*call_store.run(module, None, (), image))
            if outcome.failure is not None:
                call_store.close()
                return None, outcome
        return Resident(self, module, call_store, guest_input=guest_input), outcome

    @contextmanager
    def init_store(
        self, wasm: bytes, *, digest: str, timeout_seconds: float | None = None
    ) -> Iterator[tuple[wasmtime.Store, wasmtime.InstancePre, wasmtime.Module]]:
        """A store, begun under the sandbox's limits, and `wasm` compiled to instantiate in it.

        For running a module's init once (see `images.capture`): the store has no WASI
        argv, environment, directory or stdin, no host-module state, and its output is
        discarded; `timeout_seconds` bounds everything run in it.

        Raises:
            InvalidWasmError: `wasm` does not compile (metadata: `digest`).
        """
        try:
            module = wasmtime.Module(self._engine, wasm)
            pre = self._linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            raise InvalidWasmError(str(exc), metadata={"digest": digest}) from None
        limits = self.call_limits(timeout_seconds, 0, None, None)
        with self.activity():
            store = CallStore(
                self._engine, stdin=b"", wasi=NO_WASI_OPTIONS, memory_bytes=limits.memory_bytes,
                table_elements=self._max_table_elements, watched=False,
            )  # fmt: skip
            try:
                store.begin(
                    limits, self._tick, fuel_metering=self.fuel_metering, on_output=None,
                    events=(),
                )  # fmt: skip
                yield store.store, pre, module
            finally:
                store.close()

    def _own(self, module: CompiledModule) -> None:
        if module.engine is not self._engine:
            raise ValueError("module was compiled by another Sandbox")

    def call_limits(
        self,
        timeout_seconds: float | None,
        max_output_bytes: int | None,
        fuel: int | None,
        max_memory_bytes: int | None,
    ) -> CallLimits:
        """The limits of one call, defaulted and clamped to the sandbox's caps.

        Raises:
            InvalidArgumentError: the timeout is not a positive finite number, or fuel
                was asked for without fuel metering.
        """
        asked = (timeout_seconds, max_output_bytes, fuel, max_memory_bytes)
        if asked == _NO_LIMITS_ASKED:
            if self._default_limits is None:
                self._default_limits = self._resolve_limits(None, None, None, None)
            return self._default_limits
        return self._resolve_limits(timeout_seconds, max_output_bytes, fuel, max_memory_bytes)

    def _resolve_limits(
        self,
        timeout_seconds: float | None,
        max_output_bytes: int | None,
        fuel: int | None,
        max_memory_bytes: int | None,
    ) -> CallLimits:
        timeout = self._timeout if timeout_seconds is None else timeout_seconds
        if not 0 < timeout < math.inf:
            raise InvalidArgumentError(f"timeout_seconds must be positive, got {timeout}")
        limit = self._max_output if max_output_bytes is None else max(0, max_output_bytes)
        if fuel is not None and not self.fuel_metering:
            raise FuelUnsupportedError(
                "this executor does not meter fuel: start it with "
                "TENSORWASM_EXECUTOR_FUEL_METERING=true (tensorwasm run meters fuel when "
                "--fuel is given)"
            )
        memory = self._max_memory if max_memory_bytes is None else max_memory_bytes
        return CallLimits(timeout, limit, fuel, min(max(memory, 0), self._max_memory))

    def activity(self) -> AbstractContextManager[None]:
        """Counts a call in flight (the ticker runs until none is); refused once closed."""
        return self._in_flight

    def close(self) -> None:
        """Stops the epoch ticker once in-flight invocations end (their deadlines bound it).

        Idempotent; later invocations raise UnavailableError.
        """
        with self._lock:
            self._stop.set()
        self.tidy()
        self._close_ready()
        if self._ticker.is_alive() and self._ticker is not threading.current_thread():
            self._ticker.join()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
