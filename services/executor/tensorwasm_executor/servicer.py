"""ExecutorService: proto <-> sandbox translation; guests run on the worker pool."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from tensorwasm.common.v1 import invocation_pb2
from tensorwasm.common.v1.invocation_pb2 import OffloadedExport
from tensorwasm.executor.v1 import executor_service_pb2 as pb
from tensorwasm.executor.v1 import executor_service_pb2_grpc as pb_grpc
from tensorwasm_common.channels import DEFAULT_TENANT
from tensorwasm_common.errors import InvalidArgumentError, UnavailableError

from tensorwasm_executor.admission import Admission
from tensorwasm_executor.convert import export_to_wire, outcome_to_wire, value_from_wire
from tensorwasm_executor.cuda_host import CudaHost
from tensorwasm_executor.images import ImageProvider
from tensorwasm_executor.instances import InstanceTable
from tensorwasm_executor.modules import ModuleProvider
from tensorwasm_executor.preinit import InstanceImage
from tensorwasm_executor.sandbox import CompiledModule, HostState, Outcome, OutputSink, Sandbox
from tensorwasm_executor.settings import ExecutorSettings
from tensorwasm_executor.wasi import wasi_from_wire

_log = logging.getLogger(__name__)

# Largest data of one streamed OutputChunk; a bigger guest write is split.
OUTPUT_CHUNK_BYTES = 64 << 10
_WIRE_STREAMS = {
    "stdout": invocation_pb2.OUTPUT_STREAM_STDOUT,
    "stderr": invocation_pb2.OUTPUT_STREAM_STDERR,
}


class ExecutorServicer(pb_grpc.ExecutorServiceServicer):
    """Prepares modules and runs guest calls."""

    def __init__(
        self,
        settings: ExecutorSettings,
        sandbox: Sandbox,
        modules: ModuleProvider,
        workers: ThreadPoolExecutor,
        *,
        admission: Admission,
        instances: InstanceTable,
        gpu: CudaHost | None = None,
        images: ImageProvider | None = None,
    ) -> None:
        self._settings = settings
        self._sandbox = sandbox
        self._modules = modules
        self._workers = workers
        self._admission = admission
        self._instances = instances
        self._gpu = gpu
        self._images = images

    async def PrepareModule(
        self,
        request: pb.PrepareModuleRequest,
        context: grpc.aio.ServicerContext[pb.PrepareModuleRequest, pb.PrepareModuleResponse],
    ) -> pb.PrepareModuleResponse:
        module, cache_hit = await self._modules.get(request.module_digest)
        image = await self._image(module, request.init_export, request.tenant)
        return pb.PrepareModuleResponse(
            exports=[export_to_wire(e) for e in module.exports],
            engine_fingerprint=self._sandbox.engine_fingerprint,
            cache_hit=cache_hit,
            image_memory_bytes=image.memory_bytes if image is not None else 0,
        )

    async def _image(
        self, module: CompiledModule, init_export: str, tenant: str
    ) -> InstanceImage | None:
        """The module's pre-initialised image after `init_export` (None: no init export)."""
        if not init_export:
            return None
        if self._images is None:
            raise UnavailableError("this executor does not pre-initialise instances")
        return await self._images.get(module, init_export, tenant or DEFAULT_TENANT)

    async def Invoke(
        self,
        request: pb.InvokeRequest,
        context: grpc.aio.ServicerContext[pb.InvokeRequest, pb.InvokeResponse],
    ) -> pb.InvokeResponse:
        """Runs one call; a client that cancels (or whose deadline passes) stops the guest."""
        cancel = threading.Event()
        context.add_done_callback(lambda _: cancel.set())  # type: ignore[arg-type]  # stubs: _DoneCallback is no Protocol
        future = await self._start(request, cancel=cancel)
        outcome = await _outcome(future, cancel)
        return pb.InvokeResponse(outcome=outcome_to_wire(outcome))

    async def CreateInstance(
        self,
        request: pb.CreateInstanceRequest,
        context: grpc.aio.ServicerContext[pb.CreateInstanceRequest, pb.CreateInstanceResponse],
    ) -> pb.CreateInstanceResponse:
        """Instantiates on a worker; the instance is registered there, so one whose
        client went away mid-creation is still owned by the table (and expires)."""
        tenant = request.tenant or DEFAULT_TENANT
        wasi = wasi_from_wire(
            request.wasi, tenant=tenant, guest_dirs_root=self._settings.guest_dirs_root
        )
        ttl = self._idle_ttl(request)
        limits = self._limits(request.limits)
        module, _ = await self._modules.get(request.module_digest)
        image = await self._image(module, request.init_export, tenant)
        reservation = self._instances.reserve(tenant)
        host_state = self._host_state(module, tenant, request.offloads)

        def create() -> tuple[str, Outcome]:
            try:
                resident, outcome = self._sandbox.spawn(
                    module, stdin=request.stdin, wasi=wasi,
                    timeout_seconds=limits["timeout_seconds"],
                    max_output_bytes=limits["max_output_bytes"],
                    max_memory_bytes=limits["max_memory_bytes"],
                    host_state=host_state, image=image,
                )  # fmt: skip
            except BaseException:
                reservation.release()
                raise
            if resident is None:
                reservation.release()
                return "", outcome
            return reservation.commit(resident, module.digest, ttl).id, outcome

        try:
            slot = self._admission.acquire(tenant)
        except BaseException:
            reservation.release()
            raise
        future = self._workers.submit(create)
        future.add_done_callback(lambda _: slot.release())
        future.add_done_callback(lambda f: _if_cancelled(f, reservation.release))
        instance_id, outcome = await asyncio.wrap_future(future)
        response = pb.CreateInstanceResponse(
            instance_id=instance_id, outcome=outcome_to_wire(outcome)
        )
        response.idle_ttl.FromTimedelta(datetime.timedelta(seconds=ttl))
        return response

    async def CallInstance(
        self,
        request: pb.CallInstanceRequest,
        context: grpc.aio.ServicerContext[pb.CallInstanceRequest, pb.CallInstanceResponse],
    ) -> pb.CallInstanceResponse:
        tenant = request.tenant or DEFAULT_TENANT
        live = self._instances.checkout(request.instance_id, tenant)
        cancel = threading.Event()
        context.add_done_callback(lambda _: cancel.set())  # type: ignore[arg-type]  # stubs: _DoneCallback is no Protocol
        try:
            args = [value_from_wire(v, i) for i, v in enumerate(request.args)]
            limits = self._limits(request.limits)
            del limits["max_memory_bytes"]  # the instance's, fixed at creation
            slot = self._admission.acquire(tenant)
        except BaseException:
            self._instances.checkin(live)
            raise
        try:
            future = self._workers.submit(
                live.resident.call, request.export_name, args, cancel=cancel, **limits
            )
        except BaseException:
            slot.release()
            self._instances.checkin(live)
            raise
        future.add_done_callback(lambda _: slot.release())
        future.add_done_callback(lambda _: self._instances.checkin(live))
        outcome = await _outcome(future, cancel)
        return pb.CallInstanceResponse(outcome=outcome_to_wire(outcome))

    async def DeleteInstance(
        self,
        request: pb.DeleteInstanceRequest,
        context: grpc.aio.ServicerContext[pb.DeleteInstanceRequest, pb.DeleteInstanceResponse],
    ) -> pb.DeleteInstanceResponse:
        """Unregisters at once; a running call is stopped and waited for off the loop."""
        live = self._instances.remove(request.instance_id, request.tenant or DEFAULT_TENANT)
        await asyncio.get_running_loop().run_in_executor(None, live.resident.terminate)
        return pb.DeleteInstanceResponse()

    def _idle_ttl(self, request: pb.CreateInstanceRequest) -> float:
        settings = self._settings
        ttl = settings.instance_idle_ttl_seconds
        if request.HasField("idle_ttl"):
            requested = request.idle_ttl.ToTimedelta().total_seconds()
            if requested < 0:
                raise InvalidArgumentError(
                    "idle_ttl must not be negative", metadata={"field": "idle_ttl"}
                )
            if requested > 0:
                ttl = min(requested, settings.max_instance_idle_ttl_seconds)
        return ttl

    async def InvokeStream(
        self,
        request: pb.InvokeStreamRequest,
        context: grpc.aio.ServicerContext[pb.InvokeStreamRequest, pb.InvokeStreamResponse],
    ) -> AsyncIterator[pb.InvokeStreamResponse]:
        """Streams guest output as it is written, then the outcome.

        The guest thread hands each chunk to the event loop (`call_soon_threadsafe`) and
        a sentinel when it ends; chunks are bounded by the output cap, so the queue is
        too. When the client cancels (the handler is cancelled, or the RPC ends), the
        guest's cancel event is set and it stops within about one epoch tick; the
        admission slot is held until the guest thread has actually returned.
        """
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        cancel = threading.Event()

        def on_output(stream: str, data: bytes) -> None:  # on the guest's thread
            _post(loop, events.put_nowait, (stream, data))

        context.add_done_callback(lambda _: cancel.set())  # type: ignore[arg-type]  # stubs: _DoneCallback is no Protocol
        future = await self._start(request.invocation, on_output=on_output, cancel=cancel)
        future.add_done_callback(lambda _: _post(loop, events.put_nowait, None))
        try:
            while (event := await events.get()) is not None:
                stream, data = event
                for start in range(0, len(data), OUTPUT_CHUNK_BYTES):
                    chunk = invocation_pb2.OutputChunk(
                        stream=_WIRE_STREAMS[stream], data=data[start : start + OUTPUT_CHUNK_BYTES]
                    )
                    yield pb.InvokeStreamResponse(output=chunk)
            # The sentinel follows the future's completion: result() does not block.
            if future.cancelled():  # dropped from the pool's queue at shutdown
                raise UnavailableError("the executor is shutting down")
            outcome = future.result()
            yield pb.InvokeStreamResponse(outcome=outcome_to_wire(outcome))
        finally:
            cancel.set()  # a no-op once the guest has returned
            future.cancel()  # a guest still queued for a worker never starts

    async def _start(
        self,
        request: pb.InvokeRequest,
        *,
        on_output: OutputSink | None = None,
        cancel: threading.Event | None = None,
    ) -> concurrent.futures.Future[Outcome]:
        """Admits the call and submits the guest to the worker pool.

        The admission slot is released when the guest thread finishes (or the queued
        call is cancelled), not when the handler returns, so a call whose client went
        away keeps counting until its guest has really stopped.
        """
        tenant = request.tenant or DEFAULT_TENANT
        slot = self._admission.acquire(tenant)
        try:
            module, _ = await self._modules.get(request.module_digest)
            image = await self._image(module, request.init_export, tenant)
            args = [value_from_wire(v, i) for i, v in enumerate(request.args)]
            wasi = wasi_from_wire(
                request.wasi, tenant=tenant, guest_dirs_root=self._settings.guest_dirs_root
            )
            future = self._workers.submit(
                self._sandbox.invoke,
                module,
                request.export_name,
                args,
                stdin=request.stdin,
                wasi=wasi,
                on_output=on_output,
                cancel=cancel,
                host_state=self._host_state(module, tenant, request.offloads),
                image=image,
                **self._limits(request.limits),
            )
        except BaseException:
            slot.release()
            raise
        future.add_done_callback(lambda _: slot.release())
        return future

    def _host_state(
        self, module: CompiledModule, tenant: str, offloads: Sequence[OffloadedExport] = ()
    ) -> HostState | None:
        """The new store's host-module state: a `wasi:cuda` session when the module
        imports it or has auto-offloaded exports (made here, on the loop, so that it
        carries the request's trace)."""
        return self._gpu.state_for(module, tenant, offloads) if self._gpu is not None else None

    def _limits(self, limits: invocation_pb2.InvocationLimits) -> dict[str, Any]:
        """The request's limits, defaulted and clamped to this executor's ceilings."""
        settings = self._settings
        timeout = settings.default_timeout_seconds
        if limits.HasField("timeout"):
            requested = limits.timeout.ToTimedelta().total_seconds()
            if requested > 0:
                timeout = min(requested, settings.max_timeout_seconds)
        for field in ("max_output_bytes", "max_memory_bytes"):
            if getattr(limits, field) < 0:
                raise InvalidArgumentError(
                    f"limits.{field} must not be negative", metadata={"field": f"limits.{field}"}
                )
        max_output = limits.max_output_bytes or settings.max_output_bytes
        return {
            "timeout_seconds": timeout,
            "max_output_bytes": min(max_output, settings.max_output_bytes),
            "fuel": limits.fuel or None,
            "max_memory_bytes": limits.max_memory_bytes or None,
        }


async def _outcome(future: concurrent.futures.Future[Outcome], cancel: threading.Event) -> Outcome:
    """Awaits a guest call; if the handler is cancelled, the guest is stopped too."""
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


def _post(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    """Schedules `callback(*args)` on `loop` from any thread; a closed loop is ignored."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop closed (shutdown): nobody is waiting any more
        _log.debug("event loop closed; dropped a guest event")
