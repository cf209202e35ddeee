"""The executor's domain service: admits guest calls, runs them on the worker pool, and owns
live instances' reservations and the cancellation of calls whose caller went away.

The servicer translates the wire into the typed requests here (`Invocation`,
`InstanceSpec`, `InstanceCall`) and the outcomes back; everything a call decides between
the two (its limits, its admission slot, its worker, its instance reservation, what a
cancelled caller stops) happens in this module.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tensorwasm_common.call_limits import CallLimits, resolve_call_limits
from tensorwasm_common.errors import InvalidArgumentError, UnavailableError
from tensorwasm_common.offload_section import Declaration

from tensorwasm_executor.admission import Admission
from tensorwasm_executor.gpu.device_state import DeviceState
from tensorwasm_executor.gpu.host import CudaHost
from tensorwasm_executor.images.image_provider import ImageProvider
from tensorwasm_executor.images.module_provider import ModuleProvider
from tensorwasm_executor.inline import InlinePolicy
from tensorwasm_executor.instances.snapshots import (
    InstanceSnapshots,
    SavedState,
    restore_device_state,
)
from tensorwasm_executor.instances.table import InstanceTable
from tensorwasm_executor.metrics import count_cap_hits, count_caps_hit_by
from tensorwasm_executor.scheduling import FairPool
from tensorwasm_executor.settings import ExecutorSettings
from tensorwasm_executor.wasm.call_store import PreemptedError
from tensorwasm_executor.wasm.cpu_time import guest_cpu_seconds
from tensorwasm_executor.wasm.engine import CompiledModule, ExportInfo
from tensorwasm_executor.wasm.guest_channel import ChunkSink
from tensorwasm_executor.wasm.guest_io import NO_WASI_OPTIONS, OutputSink, WasiOptions
from tensorwasm_executor.wasm.host_modules import HostState
from tensorwasm_executor.wasm.instance_image import InstanceImage
from tensorwasm_executor.wasm.outcomes import Outcome
from tensorwasm_executor.wasm.sandbox import Sandbox
from tensorwasm_executor.wasm.values import WasmValue


@dataclass(frozen=True)
class Invocation:
    """One call of an export in a fresh instance."""

    tenant: str
    module_digest: str
    export_name: str
    args: Sequence[WasmValue] = ()
    stdin: bytes = b""
    wasi: WasiOptions = NO_WASI_OPTIONS
    limits: CallLimits = field(default_factory=CallLimits)
    init_export: str = ""
    offloads: Sequence[Declaration] = ()
    guest_input: bytes = b""  # read through wasi:tensor


@dataclass(frozen=True)
class InstanceSpec:
    """A live instance to create: its module, WASI, limits and idle TTL (None: default)."""

    tenant: str
    module_digest: str
    stdin: bytes = b""
    wasi: WasiOptions = NO_WASI_OPTIONS
    limits: CallLimits = field(default_factory=CallLimits)
    init_export: str = ""
    offloads: Sequence[Declaration] = ()
    idle_ttl_seconds: float | None = None
    guest_input: bytes = b""  # the instance's wasi:tensor input
    function_id: str = ""  # named in its snapshots
    checkpoint_seconds: int = 0  # 0: never checkpointed


@dataclass(frozen=True)
class RestoreSpec:
    """Where a restored instance's state comes from, and the guards on it."""

    snapshot_id: str = ""  # empty: the checkpoint of `instance_id`
    instance_id: str = ""  # the id it takes; empty: a new one
    max_restore_bytes: int = 0
    require_signature: bool = False


@dataclass(frozen=True)
class InstanceCall:
    """One call of an export on a live instance (its memory limit was fixed at creation)."""

    tenant: str
    instance_id: str
    export_name: str
    args: Sequence[WasmValue] = ()
    limits: CallLimits = field(default_factory=CallLimits)
    guest_input: bytes = b""  # empty: the instance's own


@dataclass(frozen=True)
class Prepared:
    """A module compiled (or found) for this executor, and its image when it has one."""

    exports: Sequence[ExportInfo]
    cache_hit: bool
    image: InstanceImage | None


class GuestCalls:
    """Runs guest calls and live instances under admission, on the fair worker pool
    (`scheduling.FairPool`: per-tenant queues, a running share per tenant)."""

    def __init__(
        self,
        settings: ExecutorSettings,
        sandbox: Sandbox,
        modules: ModuleProvider,
        workers: FairPool,
        *,
        admission: Admission,
        instances: InstanceTable,
        gpu: CudaHost | None = None,
        images: ImageProvider | None = None,
        snapshots: InstanceSnapshots | None = None,
    ) -> None:
        self._settings = settings
        self._sandbox = sandbox
        self._modules = modules
        self._workers = workers
        self._admission = admission
        self._instances = instances
        self._gpu = gpu
        self._images = images
        self._snapshots = snapshots
        # This executor's defaults and caps: fixed for its lifetime, resolved against per call.
        self._default_limits = CallLimits(
            timeout_seconds=settings.default_timeout_seconds,
            max_output_bytes=settings.max_output_bytes,
        )
        self._inline = InlinePolicy(settings.inline_budget_seconds, settings.inline_qualify_calls)
        # Whether the sandbox's tidy (closing inline calls' stores, making the next ones
        # ahead) is already scheduled on the loop.
        self._tidy_scheduled = False
        self._limit_caps = CallLimits(
            timeout_seconds=settings.max_timeout_seconds,
            max_output_bytes=settings.max_output_bytes,
        )

    @property
    def engine_fingerprint(self) -> str:
        return self._sandbox.engine_fingerprint

    async def prepare(self, module_digest: str, init_export: str, tenant: str) -> Prepared:
        """Compiles (or finds) a module and, with `init_export`, its pre-initialised image."""
        module, cache_hit = await self._modules.get(module_digest, tenant)
        image = await self._image(module, init_export, tenant)
        return Prepared(module.exports, cache_hit, image)

    async def invoke(self, invocation: Invocation, cancel: threading.Event) -> Outcome:
        """Runs one call; setting `cancel` (the caller went away) stops the guest."""
        started = await self._start(invocation, None, None, cancel)
        if isinstance(started, Outcome):  # ran inline
            return started
        return await outcome_of(started, cancel)

    async def start(
        self,
        invocation: Invocation,
        *,
        on_output: OutputSink | None = None,
        on_chunk: ChunkSink | None = None,
        cancel: threading.Event | None = None,
    ) -> concurrent.futures.Future[Outcome]:
        """Admits the call and submits the guest to the worker pool (or runs it inline).

        The admission slot is released when the guest thread finishes (or the queued
        call is cancelled), not when the caller returns, so a call whose client went
        away keeps counting until its guest has really stopped.
        """
        started = await self._start(invocation, on_output, on_chunk, cancel)
        if isinstance(started, Outcome):  # ran inline: its future is done already
            future: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
            future.set_running_or_notify_cancel()
            future.set_result(started)
            return future
        return started

    async def _start(
        self,
        invocation: Invocation,
        on_output: OutputSink | None,
        on_chunk: ChunkSink | None,
        cancel: threading.Event | None,
    ) -> Outcome | concurrent.futures.Future[Outcome]:
        """`start`'s work: the Outcome of a call run inline (no future is made for it:
        this is the short call's path), else the future of the call on a worker."""
        tenant = invocation.tenant
        slot = self._admission.acquire(tenant)
        try:
            module, _ = await self._modules.get(invocation.module_digest, tenant)
            image = (
                await self._image(module, invocation.init_export, tenant)
                if invocation.init_export
                else None
            )
            limits = self.limits(invocation.limits)
            host_state = self._host_state(module, tenant, invocation.offloads)
            run = functools.partial(
                self._sandbox.invoke,
                module,
                invocation.export_name,
                invocation.args,
                stdin=invocation.stdin,
                wasi=invocation.wasi,
                on_output=on_output,
                on_chunk=on_chunk,
                guest_input=invocation.guest_input,
                cancel=cancel,
                host_state=host_state,
                image=image,
                timeout_seconds=limits.timeout_seconds,
                max_output_bytes=limits.max_output_bytes,
                fuel=limits.fuel,
                max_memory_bytes=limits.max_memory_bytes,
            )
            # Only a call nothing outside its store can observe may run inline (inline.py).
            unobserved = (
                self._inline.enabled
                and on_output is None
                and on_chunk is None
                and host_state is None
                and invocation.wasi.read_only_dir is None
            )
            if unobserved:
                key = (tenant, module.digest, invocation.export_name)
                if self._inline.runs_inline(key, module):
                    outcome = self._run_inline(key, run)
                    if outcome is not None:
                        slot.release()
                        count_caps_hit_by(outcome)
                        return outcome
                run = functools.partial(self._learning, key, run)
            future = self._workers.submit(tenant, run)
        except BaseException:
            slot.release()
            raise
        future.add_done_callback(lambda _: slot.release())
        future.add_done_callback(count_cap_hits)
        return future

    def _run_inline(self, key: tuple[str, str, str], run: Callable[..., Outcome]) -> Outcome | None:
        """Runs the call here, on the event loop; None when it overran the inline budget
        and was stopped (it is then to run again on a worker). What the call raises is
        raised here, as a worker's would be through its future."""
        started = guest_cpu_seconds()
        self._schedule_tidy()
        try:
            outcome = run(preempt_after=self._inline.budget_seconds, defer_close=True)
        except PreemptedError:
            self._inline.preempted(key)
            return None
        self._inline.ran_inline(key, guest_cpu_seconds() - started)
        return outcome

    def _schedule_tidy(self) -> None:
        """Has the loop tidy the sandbox once this step is over: a callback scheduled now
        runs after the handler's answer has been handed to grpc, so closing the call's
        store and making the next one ahead are off the call's path."""
        if not self._tidy_scheduled:
            self._tidy_scheduled = True
            asyncio.get_running_loop().call_soon(self._tidy)

    def _tidy(self) -> None:
        self._tidy_scheduled = False
        self._sandbox.tidy()

    def _learning(self, key: tuple[str, str, str], run: Callable[[], Outcome]) -> Outcome:
        """Runs the call (on a worker) and tells the inline policy how much CPU it took
        (not its wall time, which waits for the GIL on a loaded machine)."""
        started = guest_cpu_seconds()
        outcome = run()
        self._inline.ran(key, guest_cpu_seconds() - started)
        return outcome

    async def create_instance(
        self,
        spec: InstanceSpec,
        *,
        state: InstanceImage | None = None,
        device: DeviceState | None = None,
        instance_id: str = "",
    ) -> tuple[str, Outcome, float]:
        """Instantiates on a worker: (instance id, or "" when start failed; outcome; TTL).
        With `state` (a restore), the instance starts from it instead of the function's
        image, and from `device` on the GPU, under `instance_id` when given.

        The instance is registered on the worker, so one whose client went away
        mid-creation is still owned by the table (and expires).
        """
        tenant = spec.tenant
        ttl = self.idle_ttl(spec.idle_ttl_seconds)
        limits = self.limits(spec.limits)
        module, _ = await self._modules.get(spec.module_digest, tenant)
        image = state if state is not None else await self._image(module, spec.init_export, tenant)
        if self._snapshots is not None:  # its state reachable by snapshots
            module = await self._snapshots.live_module(module, tenant)
        reservation = self._instances.reserve(tenant)
        host_state = self._host_state(module, tenant, spec.offloads)

        def create() -> tuple[str, Outcome]:
            try:
                resident, outcome = self._sandbox.spawn(
                    module, stdin=spec.stdin, wasi=spec.wasi,
                    timeout_seconds=limits.timeout_seconds,
                    max_output_bytes=limits.max_output_bytes,
                    max_memory_bytes=limits.max_memory_bytes,
                    host_state=host_state, image=image, guest_input=spec.guest_input,
                )  # fmt: skip
            except BaseException:
                reservation.release()
                raise
            if resident is None:
                reservation.release()
                return "", outcome
            try:
                if device is not None:
                    restore_device_state(host_state, device)
                live = reservation.commit(
                    resident, module.digest, ttl, instance_id=instance_id,
                    function_id=spec.function_id, checkpoint_seconds=spec.checkpoint_seconds,
                )  # fmt: skip
            except BaseException:
                reservation.release()  # a no-op once committed
                resident.terminate()
                raise
            return live.id, outcome

        try:
            slot = self._admission.acquire(tenant)
        except BaseException:
            reservation.release()
            raise
        future = self._workers.submit(tenant, create)
        future.add_done_callback(lambda _: slot.release())
        future.add_done_callback(lambda f: _if_cancelled(f, reservation.release))
        future.add_done_callback(count_cap_hits)
        instance_id, outcome = await asyncio.wrap_future(future)
        return instance_id, outcome, ttl

    async def call_instance(self, call: InstanceCall, cancel: threading.Event) -> Outcome:
        """Calls an export of a live instance; setting `cancel` stops the guest."""
        live = self._instances.checkout(call.instance_id, call.tenant)
        try:
            limits = self.limits(call.limits)
            slot = self._admission.acquire(call.tenant)
        except BaseException:
            self._instances.checkin(live)
            raise
        try:
            future = self._workers.submit(
                call.tenant, live.resident.call, call.export_name, call.args, cancel=cancel,
                guest_input=call.guest_input,
                timeout_seconds=limits.timeout_seconds,
                max_output_bytes=limits.max_output_bytes, fuel=limits.fuel,
            )  # fmt: skip
        except BaseException:
            slot.release()
            self._instances.checkin(live)
            raise
        future.add_done_callback(lambda _: slot.release())
        future.add_done_callback(lambda _: self._instances.checkin(live))
        future.add_done_callback(count_cap_hits)
        return await outcome_of(future, cancel)

    async def delete_instance(self, instance_id: str, tenant: str) -> None:
        """Unregisters at once; a running call is stopped and waited for off the loop."""
        live = self._instances.remove(instance_id, tenant)
        await asyncio.get_running_loop().run_in_executor(None, live.resident.terminate)
        if self._snapshots is not None:
            await self._snapshots.forget_checkpoint(live)

    async def snapshot_instance(
        self, tenant: str, instance_id: str, max_state_bytes: int
    ) -> SavedState:
        """Captures a live instance between calls into a store record."""
        return await self._snapshot_service().snapshot(
            tenant, instance_id, max_state_bytes=max_state_bytes
        )

    async def restore_instance(
        self, spec: InstanceSpec, restore: RestoreSpec
    ) -> tuple[str, Outcome, float, str]:
        """Brings a snapshot back as a live instance of `spec` (its module must be the
        snapshot's); -> (instance id or "", the start function's outcome, TTL, record id)."""
        snapshot_id, state, device = await self._snapshot_service().load(
            spec.tenant, snapshot_id=restore.snapshot_id, function_id=spec.function_id,
            instance_id=restore.instance_id, module_digest=spec.module_digest,
            max_restore_bytes=restore.max_restore_bytes,
            require_signature=restore.require_signature,
        )  # fmt: skip
        instance_id, outcome, ttl = await self.create_instance(
            spec, state=state, device=device, instance_id=restore.instance_id
        )
        return instance_id, outcome, ttl, snapshot_id

    def _snapshot_service(self) -> InstanceSnapshots:
        if self._snapshots is None:
            raise UnavailableError("this executor does not snapshot instances")
        return self._snapshots

    def idle_ttl(self, requested: float | None) -> float:
        """An instance's idle TTL: the default, or the request's up to the cap.

        Raises:
            InvalidArgumentError: a negative TTL.
        """
        settings = self._settings
        if requested is None or requested == 0:
            return settings.instance_idle_ttl_seconds
        if requested < 0:
            raise InvalidArgumentError(
                "idle_ttl must not be negative", metadata={"field": "idle_ttl"}
            )
        return min(requested, settings.max_instance_idle_ttl_seconds)

    def limits(self, requested: CallLimits) -> CallLimits:
        """The request's limits, defaulted and clamped to this executor's caps.

        Raises:
            InvalidArgumentError: a field out of range.
        """
        return resolve_call_limits(requested, defaults=self._default_limits, caps=self._limit_caps)

    async def _image(
        self, module: CompiledModule, init_export: str, tenant: str
    ) -> InstanceImage | None:
        """The module's pre-initialised image after `init_export` (None: no init export)."""
        if not init_export:
            return None
        if self._images is None:
            raise UnavailableError("this executor does not pre-initialise instances")
        return await self._images.get(module, init_export, tenant)

    def _host_state(
        self, module: CompiledModule, tenant: str, offloads: Sequence[Declaration]
    ) -> HostState | None:
        """The new store's host-module state: a `wasi:cuda` session when the module
        imports it or has auto-offloaded exports (made here, on the loop, so that it
        carries the request's trace)."""
        return self._gpu.state_for(module, tenant, offloads) if self._gpu is not None else None


async def outcome_of(
    future: concurrent.futures.Future[Outcome], cancel: threading.Event
) -> Outcome:
    """Awaits a guest call; if the caller is cancelled, the guest is stopped too."""
    if future.done():  # run inline: no need to wait on the loop
        return future.result()
    try:
        return await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        cancel.set()
        future.cancel()  # a call still queued for a worker never starts
        raise


def _if_cancelled(future: concurrent.futures.Future[Any], action: Callable[[], None]) -> None:
    """Runs `action` when `future` was cancelled before it ran."""
    if future.cancelled():
        action()
