"""The wasmtime sandbox: one engine, a compiled-module LRU, and isolated per-call invocations."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import platform
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import wasmtime
from tensorwasm_common.errors import (
    Code,
    InvalidArgumentError,
    NotFoundError,
    ServiceError,
    UnavailableError,
)

from tensorwasm_executor import capture, preinit, rawcall
from tensorwasm_executor.errors import (
    ArgumentMismatchError,
    ExportNotFoundError,
    InvalidWasmError,
    UnsatisfiedImportError,
    UnsupportedValueTypeError,
)
from tensorwasm_executor.preinit import InstanceImage
from tensorwasm_executor.values import ValueType, WasmValue
from tensorwasm_executor.wasm_exports import export_everything

__all__ = [
    "CompiledModule", "ExportInfo", "Failure", "HostModule", "HostState", "Outcome",
    "OutputSink", "Resident", "ResidentGoneError", "Sandbox", "WasiOptions",
    "current_host_state",
]  # fmt: skip

# Engine settings; every one is part of `Sandbox.engine_fingerprint`.
ENGINE_FLAGS: Mapping[str, bool | str | int] = {
    "epoch_interruption": True,
    "cranelift_opt_level": "speed",
    "cranelift_nan_canonicalization": False,
    "wasm_threads": False,
    "wasm_simd": True,
    "wasm_multi_value": True,
    "wasm_reference_types": True,
    "wasm_bulk_memory": True,
    "max_wasm_stack": 512 * 1024,
}
TRAP_CODES = frozenset(
    {
        "STACK_OVERFLOW", "MEMORY_OUT_OF_BOUNDS", "HEAP_MISALIGNED", "TABLE_OUT_OF_BOUNDS",
        "INDIRECT_CALL_TO_NULL", "BAD_SIGNATURE", "INTEGER_OVERFLOW", "INTEGER_DIVISION_BY_ZERO",
        "BAD_CONVERSION_TO_INTEGER", "UNREACHABLE", "INTERRUPT", "OUT_OF_FUEL", "NULL_REFERENCE",
    }
)  # fmt: skip
# Trap codes that are a limit being enforced rather than a guest bug.
_TRAP_REASONS = {"INTERRUPT": "DEADLINE_EXCEEDED", "OUT_OF_FUEL": "FUEL_EXHAUSTED"}
_IMPORT_NAME = re.compile(r"`(.*)::(.*)`")
_log = logging.getLogger(__name__)

# Receives guest output as it is written: ("stdout" | "stderr", bytes), on the guest's thread.
OutputSink = Callable[[str, bytes], None]


@dataclass(frozen=True)
class HostModule:
    """A host import module (e.g. `wasi:cuda/host@0.2.0`) and the function defining it."""

    name: str
    define: Callable[[wasmtime.Linker], None]


class HostState(Protocol):
    """Per-store state of host modules (e.g. a `wasi:cuda` session), owned by one store.

    Host functions are defined once on the engine's linker; while a call runs on a store,
    `current_host_state()` returns that store's state on the guest's thread.
    """

    def begin_call(self, deadline: float) -> None:
        """A call starts on the store; `deadline` is its end on `time.monotonic()`."""

    def end_call(self, store: wasmtime.Store, *, completed: bool, final: bool) -> None:
        """The call ended (`completed`: it returned); `final`: the store is discarded next."""

    def close(self) -> None:
        """The store is closed."""


_CURRENT = threading.local()


def current_host_state() -> HostState | None:
    """The host state of the store whose call is running on this thread, if it has one."""
    state: HostState | None = getattr(_CURRENT, "state", None)
    return state


@dataclass(frozen=True)
class WasiOptions:
    """What a guest sees of WASI beyond stdio: argv, environment, one read-only directory.

    `read_only_dir` is a host directory the caller has already resolved and authorised;
    the guest sees it, read-only, at `guest_dir`. Without it the guest has no filesystem.
    """

    argv: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    read_only_dir: str | None = None
    guest_dir: str = "/data"


NO_WASI_OPTIONS = WasiOptions()


@dataclass(frozen=True)
class ExportInfo:
    """A function export and its signature."""

    name: str
    params: tuple[ValueType, ...]
    results: tuple[ValueType, ...]


@dataclass(frozen=True)
class Failure:
    """Why a guest did not return: TRAP, DEADLINE_EXCEEDED, FUEL_EXHAUSTED,
    MEMORY_LIMIT_EXCEEDED, PROC_EXIT or CANCELLED."""

    reason: str
    trap_code: str | None
    message: str
    exit_code: int | None


@dataclass(frozen=True)
class Outcome:
    """The result of one invocation: results or a failure, plus captured output."""

    results: tuple[WasmValue, ...] | None
    failure: Failure | None
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    guest_seconds: float


@dataclass(frozen=True, eq=False)
class CompiledModule:
    """A validated, compiled, import-resolved module and its export signatures."""

    digest: str
    exports: tuple[ExportInfo, ...]
    size_bytes: int  # of the wasm (compiled here) or of the artifact file (loaded)
    module: wasmtime.Module = field(repr=False)
    instance_pre: wasmtime.InstancePre = field(repr=False)
    engine: wasmtime.Engine = field(repr=False)
    unrepresentable: frozenset[str] = field(repr=False)
    imported_modules: frozenset[str] = field(default=frozenset(), repr=False)
    _by_name: Mapping[str, ExportInfo] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {info.name: info for info in self.exports})

    def export(self, name: str) -> ExportInfo:
        """Returns the callable export `name`.

        Raises:
            ExportNotFoundError: no function export has that name.
            UnsupportedValueTypeError: its signature has a reference (or other) type.
        """
        info = self._by_name.get(name)
        if info is not None:
            bad = [t.value for t in info.params + info.results if t.is_reference]
            if bad:
                raise UnsupportedValueTypeError(
                    f"export {name!r} uses {bad[0]}", metadata={"export": name, "type": bad[0]}
                )
            return info
        if name in self.unrepresentable:
            raise UnsupportedValueTypeError(
                f"export {name!r} uses an unsupported type", metadata={"export": name}
            )
        raise ExportNotFoundError(f"no function export {name!r}", metadata={"export": name})


class _Capture:
    """A WASI output sink that keeps the first `limit` bytes and flags the rest.

    With a `sink`, the kept bytes are handed to it as they are written instead of
    being buffered (so `data` stays empty); the cap and the flag work the same.
    """

    def __init__(self, limit: int, stream: str = "", sink: OutputSink | None = None) -> None:
        self.data = bytearray()
        self.limit = limit
        self.truncated = False
        self._stream = stream
        self._sink = sink
        self._written = 0

    def write(self, chunk: bytes) -> int:
        room = self.limit - self._written
        if len(chunk) > room:
            self.truncated = True
        if room > 0 and chunk:
            kept = chunk[:room]
            self._written += len(kept)
            if self._sink is None:
                self.data += kept
            else:
                try:
                    self._sink(self._stream, kept)
                except Exception:  # a failing consumer must not fail the guest's write
                    _log.warning("output sink failed", exc_info=True)
        return len(chunk)  # the guest always sees a full write


_UNMETERED_FUEL = (1 << 63) - 1
_MEMORY_LIMIT = re.compile(r"exceeds memory limits|memory.*limit", re.IGNORECASE)


@dataclass(frozen=True)
class _CallLimits:
    """The limits of one invocation, already defaulted and clamped."""

    timeout_seconds: float
    output_bytes: int
    fuel: int | None
    memory_bytes: int


def _fingerprint(flags: Mapping[str, bool | str | int]) -> str:
    facts = {
        "wasmtime": importlib.metadata.version("wasmtime"),
        "flags": dict(flags),
        "machine": platform.machine(),
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def _signature(types: Sequence[ValueType]) -> str:
    return "(" + ", ".join(t.value for t in types) + ")"


def _trap_code(trap: wasmtime.Trap) -> str:
    try:
        code = trap.trap_code
    except ValueError:  # a code newer than wasmtime-py's TrapCode enum
        return "OTHER"
    return code.name if code is not None and code.name in TRAP_CODES else "OTHER"


_CANCELLED = Failure("CANCELLED", None, "the call was cancelled", None)


def _stopped(reason: str) -> Failure:
    """The failure of a guest that the epoch callback stopped, for `reason`."""
    rawcall.take_host_exception()  # clear it, as `_failure` does
    if reason == "CANCELLED":
        return _CANCELLED
    return Failure(reason, "INTERRUPT", "wasm trap: interrupt (the deadline passed)", None)


def _failure(exc: wasmtime.Trap | wasmtime.WasmtimeError, returns: bool) -> Failure | None:
    """Maps a wasmtime failure to a Failure (None: a successful proc_exit(0))."""
    host = rawcall.take_host_exception()
    if isinstance(exc, wasmtime.ExitTrap):
        if exc.code == 0 and not returns:
            return None
        return Failure("PROC_EXIT", None, f"guest exited with status {exc.code}", exc.code)
    suffix = f" (host function raised {host!r})" if host is not None else ""
    if isinstance(exc, wasmtime.Trap):
        code = _trap_code(exc)
        reason = _TRAP_REASONS.get(code, "TRAP")
        return Failure(reason, code, exc.message + suffix, None)
    if _MEMORY_LIMIT.search(str(exc)):
        return Failure("MEMORY_LIMIT_EXCEEDED", None, str(exc) + suffix, None)
    return Failure("TRAP", "OTHER", str(exc) + suffix, None)


class _Watch:
    """The epoch callback of a cancellable store: stops the running call once one of its
    events is set or the wall-clock deadline (time.monotonic) has passed, and records which.

    A resident instance keeps one watch for its whole life and re-arms it per call.
    """

    def __init__(self) -> None:
        self._events: tuple[threading.Event, ...] = ()
        self._deadline = math.inf
        self.stopped: str | None = None
        self._callback: rawcall.EpochCallback | None = None

    def install(self, store: wasmtime.Store) -> None:
        """Hooks the callback into `store` and has it run at every epoch tick."""
        self._callback = rawcall.set_epoch_callback(store, self._on_tick)

    def arm(
        self, store: wasmtime.Store, events: Sequence[threading.Event], deadline: float
    ) -> None:
        """Starts watching one call: stop it when an event is set or at `deadline`."""
        self._events = tuple(events)
        self._deadline = deadline
        self.stopped = None
        store.set_epoch_deadline(1)

    def _on_tick(self) -> str | None:
        if any(event.is_set() for event in self._events):
            self.stopped = "CANCELLED"
            return "cancelled"
        if time.monotonic() >= self._deadline:
            self.stopped = "DEADLINE_EXCEEDED"
            return "deadline exceeded"
        return None


class _Session:
    """A store with WASI wired to per-call output captures, and (once made) its instance.

    A fresh invocation uses one session for one call; a resident instance keeps its
    session across calls. With `watched`, an epoch callback decides at every tick
    whether the running call goes on (cancellation, terminate, wall-clock deadline);
    otherwise wasmtime traps at a fixed tick count (the unary hot path).
    """

    def __init__(
        self,
        engine: wasmtime.Engine,
        *,
        stdin: bytes,
        wasi: WasiOptions,
        memory_bytes: int,
        table_elements: int,
        watched: bool,
        host_state: HostState | None = None,
        final_calls: bool = False,
    ) -> None:
        self.stdout = _Capture(0)
        self.stderr = _Capture(0)
        # The store's host state; `final_calls`: each call is the store's last.
        self.host_state = host_state
        self._final_calls = final_calls
        config = wasmtime.WasiConfig()
        if stdin:
            rawcall.set_stdin_bytes(config, stdin)
        config.stdout_custom = self._write_stdout
        config.stderr_custom = self._write_stderr
        if wasi.argv:
            config.argv = list(wasi.argv)
        if wasi.env:
            config.env = [list(pair) for pair in wasi.env]
        if wasi.read_only_dir is not None:
            config.preopen_dir(wasi.read_only_dir, wasi.guest_dir, fs_mutable=False)
        self.store = wasmtime.Store(engine)
        self.instance: object | None = None
        self.watch: _Watch | None = None
        try:
            self.store.set_wasi(config)
            self.store.set_limits(memory_size=memory_bytes, table_elements=table_elements)
            if watched:
                self.watch = _Watch()
                self.watch.install(self.store)
        except BaseException:
            self.store.close()
            raise

    def _write_stdout(self, chunk: bytes) -> int:
        return self.stdout.write(chunk)

    def _write_stderr(self, chunk: bytes) -> int:
        return self.stderr.write(chunk)

    def begin(
        self,
        limits: _CallLimits,
        tick_seconds: float,
        *,
        fuel_metering: bool,
        on_output: OutputSink | None,
        events: Sequence[threading.Event],
    ) -> None:
        """Arms the store for one call: fresh output captures, the deadline, the fuel."""
        self.stdout = _Capture(limits.output_bytes, "stdout", on_output)
        self.stderr = _Capture(limits.output_bytes, "stderr", on_output)
        deadline = time.monotonic() + limits.timeout_seconds
        if self.host_state is not None:
            self.host_state.begin_call(deadline)
        if self.watch is not None:
            self.watch.arm(self.store, events, deadline)
        else:
            ticks = math.ceil(limits.timeout_seconds / tick_seconds)
            self.store.set_epoch_deadline(min(max(1, ticks), 1 << 62))
        if fuel_metering:
            self.store.set_fuel(limits.fuel if limits.fuel is not None else _UNMETERED_FUEL)

    def run(
        self,
        module: CompiledModule,
        info: ExportInfo | None,
        args: Sequence[WasmValue],
        image: InstanceImage | None = None,
    ) -> tuple[tuple[WasmValue, ...] | None, Failure | None, float]:
        """Instantiates (when not yet done, then writes `image` into the new instance) and
        calls `info` (None: instantiate only).

        Returns (results, failure, guest seconds); guest failures are not raised.
        """
        started = time.perf_counter()
        results: tuple[WasmValue, ...] | None = ()
        failure = None
        if self.host_state is not None:
            _CURRENT.state = self.host_state
        try:
            if self.instance is None:
                self.instance = rawcall.instantiate(module.instance_pre, self.store)
                if image is not None:
                    preinit.apply_image(self.store, self.instance, image)
            if info is not None:
                # A host state may run the export itself (auto-offload, offload.py).
                call = getattr(self.host_state, "call_export", None) or rawcall.call
                results = call(self.store, self.instance, info.name, info.results, args)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            stopped = self.watch.stopped if self.watch is not None else None
            returns = info is not None and bool(info.results)
            failure = _stopped(stopped) if stopped else _failure(exc, returns)
        finally:
            if self.host_state is not None:
                _CURRENT.state = None
        if self.host_state is not None:
            self._end_host_call(completed=failure is None)
        return (None if failure else results), failure, time.perf_counter() - started

    def _end_host_call(self, *, completed: bool) -> None:
        """Lets the host state finish the call (e.g. run the GPU work it left queued)."""
        assert self.host_state is not None
        try:
            self.host_state.end_call(self.store, completed=completed, final=self._final_calls)
        except Exception:  # the guest's outcome stands; the host state's failure is logged
            _log.exception("a host module failed to end the call")

    def outcome(
        self, results: tuple[WasmValue, ...] | None, failure: Failure | None, elapsed: float
    ) -> Outcome:
        """The Outcome of the call just run, with its captured output."""
        return Outcome(
            results=results,
            failure=failure,
            stdout=bytes(self.stdout.data),
            stderr=bytes(self.stderr.data),
            stdout_truncated=self.stdout.truncated,
            stderr_truncated=self.stderr.truncated,
            guest_seconds=elapsed,
        )

    def close(self) -> None:
        if self.host_state is not None:
            try:
                self.host_state.close()
            except Exception:
                _log.exception("a host module failed to close")
            self.host_state = None
        self.store.close()
        self.watch = None  # only now may the ctypes callback be collected


class ResidentGoneError(NotFoundError):
    """The resident instance was terminated."""

    reason = "INSTANCE_NOT_FOUND"


class Resident:
    """A long-lived instance: one store and instance that keep their state across calls.

    Calls run one at a time (a second caller waits, within its own deadline). Every
    call re-arms the deadline, the fuel and fresh output captures. `terminate()` stops a
    running call within about one epoch tick and closes the store once it has returned.
    """

    def __init__(self, sandbox: Sandbox, module: CompiledModule, session: _Session) -> None:
        self.module = module
        self._sandbox = sandbox
        self._session: _Session | None = session
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
    ) -> Outcome:
        """Calls `export` on this instance; the arguments and limits are as `Sandbox.invoke`'s.

        Raises:
            ResidentGoneError: the instance was terminated.
            ExportNotFoundError, UnsupportedValueTypeError, ArgumentMismatchError: bad call.
            InvalidArgumentError: a bad limit, or no free turn on the instance before the
                call's deadline (reason INSTANCE_BUSY).
        """
        sandbox = self._sandbox
        info = sandbox._checked_export(self.module, export, args)
        limits = sandbox._call_limits(timeout_seconds, max_output_bytes, fuel, None)
        if not self._lock.acquire(timeout=limits.timeout_seconds):
            raise InstanceBusyError(
                "another call held the instance for the whole deadline",
                metadata={"export": export},
            )
        try:
            session = self._session
            if session is None or self._terminated.is_set():
                raise ResidentGoneError("the instance was terminated")
            events = (self._terminated,) if cancel is None else (self._terminated, cancel)
            with sandbox._activity():
                session.begin(
                    limits, sandbox._tick, fuel_metering=sandbox.fuel_metering,
                    on_output=on_output, events=events,
                )  # fmt: skip
                return session.outcome(*session.run(self.module, info, args))
        finally:
            self._lock.release()

    def terminate(self) -> None:
        """Stops a running call and frees the store (once no call runs). Idempotent."""
        self._terminated.set()
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()


class InstanceBusyError(ServiceError):
    """A resident instance stayed busy with other calls for this call's whole deadline."""

    code = Code.ABORTED
    reason = "INSTANCE_BUSY"


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
        self._capacity = module_cache_entries
        # Per-store caps: a memory.grow or table.grow bomb gets -1, not the host's memory.
        self._max_memory = max_memory_bytes
        self._max_table_elements = max_table_elements
        # Fuel metering costs every guest some speed, so it is an engine-wide opt-in.
        flags = {**ENGINE_FLAGS, "consume_fuel": fuel_metering}
        self.fuel_metering = fuel_metering
        config = wasmtime.Config()
        for flag, value in flags.items():
            setattr(config, flag, value)
        self._engine = wasmtime.Engine(config)
        self._linker = wasmtime.Linker(self._engine)
        self._linker.define_wasi()
        for host in host_modules:
            host.define(self._linker)
        self._fingerprint = _fingerprint(flags)
        self._cache: OrderedDict[str, CompiledModule] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._active = 0  # invocations in flight; the ticker outlives close() until 0
        self._ticker = threading.Thread(
            target=self._run_ticker, name="wasm-epoch-ticker", daemon=True
        )
        self._ticker.start()

    def _run_ticker(self) -> None:
        while not (self._stop.is_set() and self._active == 0):
            time.sleep(self._tick)
            self._engine.increment_epoch()

    @property
    def engine_fingerprint(self) -> str:
        """A hex digest of the wasmtime version, the engine flags and the machine."""
        return self._fingerprint

    def compile(self, digest: str, wasm: bytes) -> CompiledModule:
        """Validates, compiles and caches a module under `digest` (which is not re-checked).

        Args:
            digest: the content digest the caller computed over `wasm`.
            wasm: the module's binary bytes (text format is rejected).

        Returns:
            The cached module when `digest` is known, else the newly compiled one.

        Raises:
            InvalidWasmError: the bytes do not validate (wasmtime's message).
            UnsatisfiedImportError: an import is neither WASI preview 1 nor a host module.
        """
        cached = self.lookup(digest)
        if cached is not None:
            return cached
        try:
            wasmtime.Module.validate(self._engine, wasm)
            module = wasmtime.Module(self._engine, wasm)
        except wasmtime.WasmtimeError as exc:
            raise InvalidWasmError(str(exc), metadata={"digest": digest}) from None
        return self._install(digest, module, len(wasm))

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

    def _install(self, digest: str, module: wasmtime.Module, size: int) -> CompiledModule:
        """Resolves imports once (InstancePre), reads the export signatures, caches."""
        try:
            pre = self._linker.instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            match = _IMPORT_NAME.search(str(exc))
            where = match.groups() if match else ("", "")
            raise UnsatisfiedImportError(
                str(exc), metadata={"module": where[0], "name": where[1]}
            ) from None
        exports, unrepresentable = [], set()
        for export in module.exports:
            if isinstance(export.type, wasmtime.FuncType):
                signature = rawcall.signature_of(export.type)
                if signature is None:
                    unrepresentable.add(export.name)
                else:
                    exports.append(ExportInfo(export.name, *signature))
        compiled = CompiledModule(
            digest,
            tuple(exports),
            size,
            module,
            pre,
            self._engine,
            frozenset(unrepresentable),
            frozenset(entry.module for entry in module.imports),
        )
        with self._lock:
            compiled = self._cache.setdefault(digest, compiled)
            self._cache.move_to_end(digest)
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return compiled

    def lookup(self, digest: str) -> CompiledModule | None:
        """Returns the cached module for `digest` (marking it recently used), or None."""
        with self._lock:
            compiled = self._cache.get(digest)
            if compiled is not None:
                self._cache.move_to_end(digest)
            return compiled

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

        Returns:
            The Outcome: results or a Failure, captured output and guest time.

        Raises:
            ExportNotFoundError, UnsupportedValueTypeError, ArgumentMismatchError: bad call.
            InvalidArgumentError: the timeout is not a positive finite number, or fuel
                was asked for without fuel metering.
            UnavailableError: the sandbox is closed.
        """
        info = self._checked_export(module, export, args)
        limits = self._call_limits(timeout_seconds, max_output_bytes, fuel, max_memory_bytes)
        with self._activity():
            session = _Session(
                self._engine, stdin=stdin, wasi=wasi, memory_bytes=limits.memory_bytes,
                table_elements=self._max_table_elements, watched=cancel is not None,
                host_state=host_state, final_calls=True,
            )  # fmt: skip
            try:
                events = () if cancel is None else (cancel,)
                session.begin(
                    limits, self._tick, fuel_metering=self.fuel_metering,
                    on_output=on_output, events=events,
                )  # fmt: skip
                if cancel is not None and cancel.is_set():
                    return session.outcome(None, _CANCELLED, 0.0)
                return session.outcome(*session.run(module, info, args, image))
            finally:
                session.close()

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

        Returns:
            (the Resident, the instantiation's Outcome), or (None, the Outcome with the
            failure) when instantiation trapped, exited or ran out of time.

        Raises:
            InvalidArgumentError: a bad limit.
            UnavailableError: the sandbox is closed.
        """
        self._own(module)
        limits = self._call_limits(timeout_seconds, max_output_bytes, None, max_memory_bytes)
        with self._activity():
            session = _Session(
                self._engine, stdin=stdin, wasi=wasi, memory_bytes=limits.memory_bytes,
                table_elements=self._max_table_elements, watched=True, host_state=host_state,
            )  # fmt: skip
            session.begin(
                limits, self._tick, fuel_metering=self.fuel_metering, on_output=None, events=()
            )
            outcome = session.outcome(*session.run(module, None, (), image))
            if outcome.failure is not None:
                session.close()
                return None, outcome
        return Resident(self, module, session), outcome

    def capture_image(
        self,
        module: CompiledModule,
        wasm: bytes,
        init_export: str,
        *,
        timeout_seconds: float | None = None,
    ) -> InstanceImage:
        """Runs `init_export` once and returns the image of the state it left.

        Init runs in a fresh instance of a probe copy of `wasm` (every memory and global
        exported; see `capture`) with no WASI argv, environment, directory or stdin, no
        host-module state, and its output discarded, under the sandbox's memory cap.

        Args:
            module: `wasm` as compiled by this sandbox (its exports are checked).
            wasm: the module's bytes.
            init_export: a function export `() -> ()`.
            timeout_seconds: the deadline of start function + init.

        Raises:
            InitExportInvalidError: no such export, or not `() -> ()`.
            InitFailedError: the start function or init failed (no image).
            PreinitStateUnsupportedError: init changed state no image can restore.
            InvalidWasmError: the probe copy does not compile.
        """
        self._own(module)
        capture.check_init_export(module.exports, init_export)
        probes = export_everything(wasm)
        try:
            probe_module = wasmtime.Module(self._engine, probes.wasm)
            pre = self._linker.instantiate_pre(probe_module)
        except wasmtime.WasmtimeError as exc:
            raise InvalidWasmError(str(exc), metadata={"digest": module.digest}) from None
        limits = self._call_limits(timeout_seconds, 0, None, None)
        with self._activity():
            session = _Session(
                self._engine, stdin=b"", wasi=NO_WASI_OPTIONS, memory_bytes=limits.memory_bytes,
                table_elements=self._max_table_elements, watched=False,
            )  # fmt: skip
            try:
                session.begin(
                    limits, self._tick, fuel_metering=self.fuel_metering, on_output=None,
                    events=(),
                )  # fmt: skip
                return capture.run_init(
                    session.store, pre, probes, probe_module, source_digest=module.digest,
                    engine_fingerprint=self._fingerprint, init_export=init_export,
                )  # fmt: skip
            finally:
                session.close()

    def _own(self, module: CompiledModule) -> None:
        if module.engine is not self._engine:
            raise ValueError("module was compiled by another Sandbox")

    def _checked_export(
        self, module: CompiledModule, export: str, args: Sequence[WasmValue]
    ) -> ExportInfo:
        """The export's signature, checked against the arguments' types."""
        self._own(module)
        info = module.export(export)
        got = tuple(arg.type for arg in args)
        if got != info.params:
            expected = _signature(info.params)
            raise ArgumentMismatchError(
                f"export {export!r} takes {expected}, got {_signature(got)}",
                metadata={"export": export, "expected": expected, "got": _signature(got)},
            )
        return info

    def _call_limits(
        self,
        timeout_seconds: float | None,
        max_output_bytes: int | None,
        fuel: int | None,
        max_memory_bytes: int | None,
    ) -> _CallLimits:
        """The limits of one call, defaulted and clamped to the sandbox's caps."""
        timeout = self._timeout if timeout_seconds is None else timeout_seconds
        if not 0 < timeout < math.inf:
            raise InvalidArgumentError(f"timeout_seconds must be positive, got {timeout}")
        limit = self._max_output if max_output_bytes is None else max(0, max_output_bytes)
        if fuel is not None and not self.fuel_metering:
            raise InvalidArgumentError(
                "this executor does not meter fuel", reason="FUEL_UNSUPPORTED"
            )
        memory = self._max_memory if max_memory_bytes is None else max_memory_bytes
        return _CallLimits(timeout, limit, fuel, min(max(memory, 0), self._max_memory))

    @contextmanager
    def _activity(self) -> Iterator[None]:
        """Counts a call in flight (the ticker runs until none is); refused once closed."""
        with self._lock:
            if self._stop.is_set():
                raise UnavailableError("the sandbox is closed")
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1

    def close(self) -> None:
        """Stops the epoch ticker once in-flight invocations end (their deadlines bound it).

        Idempotent; later invocations raise UnavailableError.
        """
        with self._lock:
            self._stop.set()
        if self._ticker.is_alive() and self._ticker is not threading.current_thread():
            self._ticker.join()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
