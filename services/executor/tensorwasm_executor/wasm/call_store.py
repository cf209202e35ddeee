"""One wasmtime store with WASI wired to per-call output captures: arm, run, outcome, close."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import wasmtime
from wasmtime import _ffi as ffi

from tensorwasm_executor.metrics import ACTIVE_INSTANCES, INSTANCE_SPAWNS, INSTANCE_TERMINATIONS
from tensorwasm_executor.wasm import instance_image as preinit
from tensorwasm_executor.wasm import rawcall
from tensorwasm_executor.wasm.cpu_time import guest_cpu_seconds
from tensorwasm_executor.wasm.engine import CompiledModule, ExportInfo
from tensorwasm_executor.wasm.guest_channel import CURRENT as CHANNEL
from tensorwasm_executor.wasm.guest_channel import ChunkSink, GuestChannel
from tensorwasm_executor.wasm.guest_io import OutputCapture, OutputSink, WasiOptions
from tensorwasm_executor.wasm.host_modules import CURRENT, HostState
from tensorwasm_executor.wasm.instance_image import InstanceImage
from tensorwasm_executor.wasm.outcomes import Failure, Outcome, failure_of, stopped_failure
from tensorwasm_executor.wasm.values import WasmValue

_UNMETERED_FUEL = (1 << 63) - 1
# What `EpochWatch.stopped` says of a call stopped at its `preempt_at` (see Sandbox.invoke).
PREEMPTED = "PREEMPTED"
_log = logging.getLogger(__name__)


class PreemptedError(Exception):
    """A call stopped at its `preempt_after` (see Sandbox.invoke): nothing of it stands,
    and it is to be run again from the start elsewhere."""

    def __init__(self, guest_seconds: float) -> None:
        super().__init__(f"preempted after {guest_seconds:.6f}s")
        self.guest_seconds = guest_seconds


@dataclass(frozen=True)
class CallLimits:
    """The limits of one invocation, already defaulted and clamped."""

    timeout_seconds: float
    output_bytes: int
    fuel: int | None
    memory_bytes: int


class EpochWatch:
    """The epoch callback of a cancellable store: stops the running call once one of its
    events is set or the wall-clock deadline (time.monotonic) has passed, and records which.

    A resident instance keeps one watch for its whole life and re-arms it per call.
    """

    def __init__(self) -> None:
        self._events: tuple[threading.Event, ...] = ()
        self._deadline = math.inf
        self._preempt_at = math.inf
        self.stopped: str | None = None
        self._callback: rawcall.EpochCallback | None = None

    def install(self, store: wasmtime.Store) -> None:
        """Hooks the callback into `store` and has it run at every epoch tick."""
        self._callback = rawcall.set_epoch_callback(store, self._on_tick)

    def release(self) -> None:
        """Drops the callback once its store is closed (it is never called again): the
        watch and its ctypes callback refer to each other, and a cycle would leave them,
        and the events they hold, to the cyclic collector instead of being freed now."""
        if self._callback is not None:
            self._callback.release()
            self._callback = None
        self._events = ()

    def arm(
        self, events: Sequence[threading.Event], deadline: float, preempt_at: float = math.inf
    ) -> None:
        """Starts watching one call: stop it when an event is set, at `deadline`, or
        (as PREEMPTED, to be run again elsewhere) once the thread's CPU time less the
        collector's passes (`cpu_time.guest_cpu_seconds()`) reaches `preempt_at`: time
        the guest spent, not time its thread waited for the CPU or the GIL on a loaded
        machine, nor a collection that happened to fall inside the call.

        The store's epoch deadline must then be one tick, so the callback runs at each.
        """
        self._events = tuple(events)
        self._deadline = deadline
        self._preempt_at = preempt_at
        self.stopped = None

    def _on_tick(self) -> str | None:
        if any(event.is_set() for event in self._events):
            self.stopped = "CANCELLED"
            return "cancelled"
        if time.monotonic() >= self._deadline:
            self.stopped = "DEADLINE_EXCEEDED"
            return "deadline exceeded"
        if self._preempt_at != math.inf and guest_cpu_seconds() >= self._preempt_at:
            self.stopped = PREEMPTED
            return "preempted"
        return None


def _counter(store: wasmtime.Store, instance: object, name: str) -> int:
    """The value of the instance's exported i32 counter global `name`."""
    item = preinit.export_of(store, instance, name, ffi.WASMTIME_EXTERN_GLOBAL)
    _, bits = preinit.read_global(store, item)
    return int.from_bytes(bits[:4], "little")


class CallStore:
    """A store with WASI wired to per-call output captures, and (once made) its instance.

    A fresh invocation uses one call store for one call; a resident instance keeps its
    call store across calls. With `watched`, an epoch callback decides at every tick
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
        self.stdout = OutputCapture(0)
        self.stderr = OutputCapture(0)
        # The store's host state; `final_calls`: each call is the store's last.
        self.host_state = host_state
        self._final_calls = final_calls
        self.channel = GuestChannel()
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
        # The instance's exports called so far, prepared (rawcall.ExportCall) by name.
        self._calls: dict[str, rawcall.ExportCall] = {}
        self.watch: EpochWatch | None = None
        # The cap-hit counters' values seen so far, and whether the last call raised them.
        self._cap_hits_seen = (0, 0)
        self._caps_hit = (False, False)
        try:
            self._context = rawcall.StoreContext(self.store)
            self.store.set_wasi(config)
            self.store.set_limits(memory_size=memory_bytes, table_elements=table_elements)
            if watched:
                self.watch = EpochWatch()
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
        limits: CallLimits,
        tick_seconds: float,
        *,
        fuel_metering: bool,
        on_output: OutputSink | None,
        events: Sequence[threading.Event],
        guest_input: bytes = b"",
        on_chunk: ChunkSink | None = None,
        preempt_after: float | None = None,
    ) -> None:
        """Arms the store for one call: fresh output captures, a fresh guest channel
        (`guest_input` staged, chunks to `on_chunk` or collected), the deadline, the fuel;
        with `preempt_after` (seconds of this thread's CPU time; a watched store only),
        the call is stopped as PREEMPTED at the first epoch tick after that much."""
        self.stdout = OutputCapture(limits.output_bytes, "stdout", on_output)
        self.stderr = OutputCapture(limits.output_bytes, "stderr", on_output)
        deadline = time.monotonic() + limits.timeout_seconds
        self.channel = GuestChannel(guest_input, on_chunk)
        self.channel.arm(deadline, events)
        if self.host_state is not None:
            self.host_state.begin_call(deadline)
        if self.watch is not None:
            preempt_at = math.inf
            if preempt_after is not None:
                preempt_at = guest_cpu_seconds() + preempt_after
            self.watch.arm(events, deadline, preempt_at)
            self._context.set_epoch_deadline(1)
        else:
            ticks = math.ceil(limits.timeout_seconds / tick_seconds)
            self._context.set_epoch_deadline(min(max(1, ticks), 1 << 62))
        if fuel_metering:
            self._context.set_fuel(limits.fuel if limits.fuel is not None else _UNMETERED_FUEL)

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
            CURRENT.state = self.host_state
        CHANNEL.channel = self.channel
        try:
            if self.instance is None:
                self.instance = rawcall.instantiate(module.instance_pre, self.store)
                INSTANCE_SPAWNS.inc()
                ACTIVE_INSTANCES.inc()
                if image is not None:
                    preinit.apply_image(self.store, self.instance, image)
            if info is not None:
                # A host state may run the export itself (auto-offload, offload.py).
                offload = getattr(self.host_state, "call_export", None)
                if offload is None:
                    results = self._export_call(info)(args)
                else:
                    results = offload(self.store, self.instance, info.name, info.results, args)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
            stopped = self.watch.stopped if self.watch is not None else None
            returns = info is not None and bool(info.results)
            failure = stopped_failure(stopped) if stopped else failure_of(exc, returns)
        finally:
            CHANNEL.channel = None
            if self.host_state is not None:
                CURRENT.state = None
        elapsed = time.perf_counter() - started
        self._read_cap_hits(module)
        if self.host_state is not None:
            self._end_host_call(completed=failure is None)
        return (None if failure else results), failure, elapsed

    def _export_call(self, info: ExportInfo) -> rawcall.ExportCall:
        """The instance's prepared call of `info`, made at its first call."""
        call = self._calls.get(info.name)
        if call is None:
            call = rawcall.ExportCall(
                self.store, self.instance, info.name, info.params, info.results
            )
            self._calls[info.name] = call
        return call

    def _read_cap_hits(self, module: CompiledModule) -> None:
        """Sets which caps the call just run ran into, from the module's counters."""
        if self.instance is None or module.cap_counters == (None, None):
            self._caps_hit = (False, False)
            return
        counts = tuple(
            0 if name is None else _counter(self.store, self.instance, name)
            for name in module.cap_counters
        )
        memory, table = counts
        seen_memory, seen_table = self._cap_hits_seen
        self._caps_hit = (memory != seen_memory, table != seen_table)
        self._cap_hits_seen = (memory, table)

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
            memory_cap_hit=self._caps_hit[0],
            table_cap_hit=self._caps_hit[1],
            chunks=bytes(self.channel.chunks),
        )

    def close(self) -> None:
        """Closes the host state (if any) and the store."""
        if self.host_state is not None:
            try:
                self.host_state.close()
            except Exception:
                _log.exception("a host module failed to close")
            self.host_state = None
        self._calls = {}  # their context pointer dies with the store
        self.store.close()
        if self.instance is not None:
            INSTANCE_TERMINATIONS.inc()
            ACTIVE_INSTANCES.dec()
            self.instance = None
        if self.watch is not None:  # only now may the ctypes callback be collected
            self.watch.release()
            self.watch = None
