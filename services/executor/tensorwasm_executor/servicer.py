"""ExecutorService: proto <-> domain translation; the calls themselves are `guest_calls`'."""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from tensorwasm.common.v1 import invocation_pb2, values_pb2
from tensorwasm.executor.v1 import executor_service_pb2 as pb
from tensorwasm.executor.v1 import executor_service_pb2_grpc as pb_grpc
from tensorwasm_common.call_args import check_call
from tensorwasm_common.call_limits import CallLimits
from tensorwasm_common.durations import duration_seconds
from tensorwasm_common.errors import UnavailableError, UnimplementedError
from tensorwasm_common.interceptors import HopInterceptor
from tensorwasm_common.offload_section import Declaration
from tensorwasm_common.tenants import DEFAULT_TENANT

from tensorwasm_executor.call_stream import CallStreams
from tensorwasm_executor.convert import export_to_wire, outcome_to_wire, value_from_wire
from tensorwasm_executor.errors import InstanceStateUnsupportedError
from tensorwasm_executor.guest_calls import (
    GuestCalls,
    InstanceCall,
    InstanceSpec,
    Invocation,
    RestoreSpec,
)
from tensorwasm_executor.wasi import wasi_from_wire
from tensorwasm_executor.wasm.values import WasmValue

_log = logging.getLogger(__name__)
SERVICE = pb.DESCRIPTOR.services_by_name["ExecutorService"].full_name

# Largest data of one streamed OutputChunk; a bigger guest write is split.
OUTPUT_CHUNK_BYTES = 64 << 10
_CHUNK = "chunk"  # an emitted chunk among the output events
_WIRE_STREAMS = {
    "stdout": invocation_pb2.OUTPUT_STREAM_STDOUT,
    "stderr": invocation_pb2.OUTPUT_STREAM_STDERR,
}


class ExecutorServicer(pb_grpc.ExecutorServiceServicer):
    """Prepares modules and runs guest calls: each RPC is translated to a `GuestCalls` call."""

    def __init__(self, calls: GuestCalls, *, guest_dirs_root: Path | None) -> None:
        self._calls = calls
        self._guest_dirs_root = guest_dirs_root
        self._streams: CallStreams | None = None

    def carry_calls(
        self, hop: HopInterceptor, *, call_log: bool = False, max_answer_bytes: int = 64 << 20
    ) -> None:
        """Serves `Calls`: Invoke and CallInstance carried as frames, each wrapped by `hop`
        as its unary RPC is (until this is called, `Calls` is UNIMPLEMENTED)."""
        self._streams = CallStreams(
            {
                field: (method, hop.frame_behavior(method, behavior))
                for field, method, behavior in (
                    ("invoke", f"/{SERVICE}/Invoke", self.Invoke),
                    ("call_instance", f"/{SERVICE}/CallInstance", self.CallInstance),
                )
            },
            call_log=call_log,
            max_answer_bytes=max_answer_bytes,
        )

    def drain_calls(self) -> None:
        """New calls on `Calls` streams are answered not run from now on (shutdown)."""
        if self._streams is not None:
            self._streams.drain()

    async def Calls(  # type: ignore[override]  # stubs: aio's reader/writer form returns None
        self,
        request_iterator: AsyncIterator[pb.CallsRequest],
        context: grpc.aio.ServicerContext[pb.CallsRequest, pb.CallsResponse],
    ) -> None:
        """Invoke and CallInstance calls as frames of one stream (see `call_stream`)."""
        if self._streams is None:
            raise UnimplementedError("this executor does not carry calls on a stream")
        await self._streams.serve(context)

    async def PrepareModule(
        self,
        request: pb.PrepareModuleRequest,
        context: grpc.aio.ServicerContext[pb.PrepareModuleRequest, pb.PrepareModuleResponse],
    ) -> pb.PrepareModuleResponse:
        tenant = request.tenant or DEFAULT_TENANT
        if request.HasField("wasi"):  # refused at deploy as every call would be
            wasi_from_wire(request.wasi, tenant=tenant, guest_dirs_root=self._guest_dirs_root)
        prepared = await self._calls.prepare(request.module_digest, request.init_export, tenant)
        image = prepared.image
        return pb.PrepareModuleResponse(
            exports=[export_to_wire(e) for e in prepared.exports],
            engine_fingerprint=self._calls.engine_fingerprint,
            cache_hit=prepared.cache_hit,
            image_memory_bytes=image.memory_bytes if image is not None else 0,
        )

    async def Invoke(
        self,
        request: pb.InvokeRequest,
        context: grpc.aio.ServicerContext[pb.InvokeRequest, pb.InvokeResponse],
    ) -> pb.InvokeResponse:
        """Runs one call; a client that cancels (or whose deadline passes) stops the guest.

        grpc cancels this handler's task then, and the guest call's wait sets `cancel`
        (`outcome_of`). No done callback on the context: grpc keeps it in a reference
        cycle with the call's state, which every call would leave to the collector."""
        cancel = threading.Event()
        outcome = await self._calls.invoke(self._invocation(request), cancel)
        return pb.InvokeResponse(outcome=outcome_to_wire(outcome))

    async def CreateInstance(
        self,
        request: pb.CreateInstanceRequest,
        context: grpc.aio.ServicerContext[pb.CreateInstanceRequest, pb.CreateInstanceResponse],
    ) -> pb.CreateInstanceResponse:
        tenant = request.tenant or DEFAULT_TENANT
        spec = InstanceSpec(
            tenant=tenant,
            module_digest=request.module_digest,
            stdin=request.stdin,
            wasi=wasi_from_wire(request.wasi, tenant=tenant, guest_dirs_root=self._guest_dirs_root),
            limits=limits_from_wire(request.limits),
            init_export=request.init_export,
            offloads=offloads_from_wire(request.offloads),
            guest_input=request.input,
            idle_ttl_seconds=_idle_ttl(request),
            function_id=request.function_id,
            checkpoint_seconds=request.checkpoint_seconds,
        )
        instance_id, outcome, ttl = await self._calls.create_instance(spec)
        response = pb.CreateInstanceResponse(
            instance_id=instance_id, outcome=outcome_to_wire(outcome)
        )
        response.idle_ttl.FromTimedelta(datetime.timedelta(seconds=ttl))
        return response

    async def SnapshotInstance(
        self,
        request: pb.SnapshotInstanceRequest,
        context: grpc.aio.ServicerContext[pb.SnapshotInstanceRequest, pb.SnapshotInstanceResponse],
    ) -> pb.SnapshotInstanceResponse:
        saved = await self._calls.snapshot_instance(
            request.tenant or DEFAULT_TENANT, request.instance_id, request.max_state_bytes
        )
        return pb.SnapshotInstanceResponse(
            snapshot_id=saved.snapshot_id,
            state_size_bytes=saved.state_size_bytes,
            variant=saved.variant,
            signed=saved.signed,
        )

    async def RestoreInstance(
        self,
        request: pb.RestoreInstanceRequest,
        context: grpc.aio.ServicerContext[pb.RestoreInstanceRequest, pb.RestoreInstanceResponse],
    ) -> pb.RestoreInstanceResponse:
        tenant = request.tenant or DEFAULT_TENANT
        spec = InstanceSpec(
            tenant=tenant,
            module_digest=request.module_digest,
            wasi=wasi_from_wire(request.wasi, tenant=tenant, guest_dirs_root=self._guest_dirs_root),
            limits=limits_from_wire(request.limits),
            offloads=offloads_from_wire(request.offloads),
            idle_ttl_seconds=_idle_ttl(request),
            function_id=request.function_id,
            checkpoint_seconds=request.checkpoint_seconds,
        )
        restore = RestoreSpec(
            snapshot_id=request.snapshot_id,
            instance_id=request.instance_id,
            max_restore_bytes=request.max_restore_bytes,
            require_signature=request.require_signature,
        )
        instance_id, outcome, ttl, snapshot_id = await self._calls.restore_instance(spec, restore)
        if not instance_id:
            failure = outcome.failure
            raise InstanceStateUnsupportedError(
                "the snapshot could not be restored: the instance failed to start"
                + (f" ({failure.message})" if failure is not None else ""),
                metadata={"kind": "restore", "index": "-1"},
            )
        response = pb.RestoreInstanceResponse(instance_id=instance_id, snapshot_id=snapshot_id)
        response.idle_ttl.FromTimedelta(datetime.timedelta(seconds=ttl))
        return response

    async def CallInstance(
        self,
        request: pb.CallInstanceRequest,
        context: grpc.aio.ServicerContext[pb.CallInstanceRequest, pb.CallInstanceResponse],
    ) -> pb.CallInstanceResponse:
        cancel = threading.Event()  # set when grpc cancels this handler (as for Invoke)
        check_call(request.export_name, request.args)
        call = InstanceCall(
            tenant=request.tenant or DEFAULT_TENANT,
            instance_id=request.instance_id,
            export_name=request.export_name,
            args=args_from_wire(request.args),
            limits=limits_from_wire(request.limits),
            guest_input=request.input,
        )
        outcome = await self._calls.call_instance(call, cancel)
        return pb.CallInstanceResponse(outcome=outcome_to_wire(outcome))

    async def DeleteInstance(
        self,
        request: pb.DeleteInstanceRequest,
        context: grpc.aio.ServicerContext[pb.DeleteInstanceRequest, pb.DeleteInstanceResponse],
    ) -> pb.DeleteInstanceResponse:
        await self._calls.delete_instance(request.instance_id, request.tenant or DEFAULT_TENANT)
        return pb.DeleteInstanceResponse()

    async def InvokeStream(
        self,
        request: pb.InvokeStreamRequest,
        context: grpc.aio.ServicerContext[pb.InvokeStreamRequest, pb.InvokeStreamResponse],
    ) -> AsyncIterator[pb.InvokeStreamResponse]:
        """Streams guest output and emitted chunks as they come, then the outcome.

        The guest thread hands each piece to the event loop (`call_soon_threadsafe`) and
        a sentinel when it ends; output is bounded by the output cap and chunks by their
        per-call cap, so the queue is too. Once the client has gone, an emit answers
        client-gone (-3). When the client cancels (the handler is cancelled, or the RPC ends), the
        guest's cancel event is set and it stops within about one epoch tick; the
        admission slot is held until the guest thread has actually returned.
        """
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        cancel = threading.Event()

        def on_output(stream: str, data: bytes) -> None:  # on the guest's thread
            _post(loop, events.put_nowait, (stream, data))

        def on_chunk(data: bytes) -> bool:  # on the guest's thread
            if cancel.is_set():
                return False
            _post(loop, events.put_nowait, (_CHUNK, data))
            return True

        context.add_done_callback(lambda _: cancel.set())  # type: ignore[arg-type]  # stubs: _DoneCallback is no Protocol
        invocation = self._invocation(request.invocation)
        future = await self._calls.start(
            invocation, on_output=on_output, on_chunk=on_chunk, cancel=cancel
        )
        future.add_done_callback(lambda _: _post(loop, events.put_nowait, None))
        try:
            while (event := await events.get()) is not None:
                stream, data = event
                if stream == _CHUNK:
                    yield pb.InvokeStreamResponse(chunk=data)
                    continue
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

    def _invocation(self, request: pb.InvokeRequest) -> Invocation:
        check_call(request.export_name, request.args)
        tenant = request.tenant or DEFAULT_TENANT
        return Invocation(
            tenant=tenant,
            module_digest=request.module_digest,
            export_name=request.export_name,
            args=args_from_wire(request.args),
            stdin=request.stdin,
            wasi=wasi_from_wire(request.wasi, tenant=tenant, guest_dirs_root=self._guest_dirs_root),
            limits=limits_from_wire(request.limits),
            init_export=request.init_export,
            offloads=offloads_from_wire(request.offloads),
            guest_input=request.input,
        )


def _idle_ttl(request: pb.CreateInstanceRequest | pb.RestoreInstanceRequest) -> float | None:
    """The request's idle TTL in seconds; None when unset (the executor's default)."""
    if not request.HasField("idle_ttl"):
        return None
    return duration_seconds(request.idle_ttl, "idle_ttl")


def args_from_wire(args: Sequence[values_pb2.Value]) -> list[WasmValue]:
    return [value_from_wire(v, i) for i, v in enumerate(args)]


def limits_from_wire(limits: invocation_pb2.InvocationLimits) -> CallLimits:
    """The message's limits; a zero field is unset, and so is a timeout that is not
    positive (the executor's default applies).

    Raises:
        InvalidArgumentError: the timeout is not a valid duration.
    """
    timeout = (
        duration_seconds(limits.timeout, "limits.timeout") if limits.HasField("timeout") else 0
    )
    return CallLimits(
        timeout_seconds=timeout if timeout > 0 else None,
        max_output_bytes=limits.max_output_bytes or None,
        fuel=limits.fuel or None,
        max_memory_bytes=limits.max_memory_bytes or None,
    )


def offloads_from_wire(offloads: Sequence[invocation_pb2.OffloadedExport]) -> list[Declaration]:
    return [Declaration(o.export_name, o.op, tuple(o.args)) for o in offloads]


def _post(loop: asyncio.AbstractEventLoop, callback: Callable[..., Any], *args: Any) -> None:
    """Schedules `callback(*args)` on `loop` from any thread; a closed loop is ignored."""
    try:
        loop.call_soon_threadsafe(callback, *args)
    except RuntimeError:  # the loop closed (shutdown): nobody is waiting any more
        _log.debug("event loop closed; dropped a guest event")
