"""The executor's path to the dispatcher: a synchronous gRPC channel used by guest threads.

A `wasi:cuda` host function runs on the guest's worker thread, inside the wasm call, and
must block until its batch has run. It calls the dispatcher through this blocking channel
(grpc's sync stack is thread-safe and does not touch the server's asyncio loop, which
keeps serving other requests). Each transport carries its tenant in the request and in
`x-tensorwasm-tenant`, and the trace context of the request it serves, so the dispatcher's
spans join the invocation's trace. RPC failures are mapped to ABI codes here, once.

The empty request that ends a session once its store is done is sent without waiting
(`end_session_later`): a non-blocking call whose completion releases one of a bounded
number of slots (`MAX_BACKGROUND_ENDS`); when they are all taken, the guest's thread
sends it itself, so a slow dispatcher pushes back instead of piling up requests. A busy
dispatcher's refusal is retried after its delay within the request's timeout; an end
that still fails is logged, and the dispatcher expires the session after its idle TTL.
Closing the client waits (bounded) for the ends in flight.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.grpc import client_interceptor, grpcext
from tensorwasm.common.v1.service_token import with_service_token
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2 as pb
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2_grpc as pb_grpc
from tensorwasm_common.channels import (
    TENANT_METADATA_KEY,
    channel_options,
    open_blocking_channel,
)
from tensorwasm_common.errors import Code
from tensorwasm_common.gpu_abi import AbiError, ArgTag, BufferRef, ScalarArg
from tensorwasm_common.gpu_batch import (
    AllocBuffer,
    Batch,
    BatchResult,
    Command,
    CommandResult,
    FreeBuffer,
    KernelArg,
    LaunchKernel,
    LoadKernel,
    WriteBuffer,
)
from tensorwasm_common.status import error_from_rpc
from tensorwasm_common.tls import ClientTls

from tensorwasm_executor.gpu.batch import TransportError

_SCALAR_FIELDS = {
    ArgTag.I32: "i32",
    ArgTag.I64: "i64",
    ArgTag.F32: "f32_bits",
    ArgTag.F64: "f64_bits",
    ArgTag.U32: "u32",
    ArgTag.U64: "u64",
}
_log = logging.getLogger(__name__)
# Session ends sent in the background and not answered yet, at most (per client).
MAX_BACKGROUND_ENDS = 256
# How long closing the client waits for the ends in flight.
CLOSE_DRAIN_SECONDS = 2.0
_UNREACHABLE = frozenset({Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.CANCELLED, Code.UNKNOWN})


class DispatcherClient:
    """A blocking channel to the dispatcher, shared by every guest thread."""

    def __init__(
        self,
        address: str,
        *,
        max_message_bytes: int,
        service_token: str | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        """Opens the channel (connecting lazily).

        Args:
            address: The dispatcher's `host:port`.
            max_message_bytes: The largest request or reply (a full batch and its bytes).
            service_token: The fleet's service token, sent on every call.
            tls: TLS (and the client certificate) of the channel; None: plaintext.
        """
        self._channel = open_blocking_channel(address, tls, channel_options(max_message_bytes))
        tracing = client_interceptor()  # type: ignore[no-untyped-call]
        # OpenTelemetry's own intercept_channel: its interceptor is not a grpc one.
        traced = grpcext.intercept_channel(  # type: ignore[no-untyped-call]
            with_service_token(self._channel, service_token), tracing
        )
        self._stub = pb_grpc.DispatcherServiceStub(traced)
        self._ends = _BackgroundEnds(MAX_BACKGROUND_ENDS)

    def transport(self, tenant: str) -> DispatcherTransport:
        """A tenant's transport, bound to the current trace context (call it while serving)."""
        return DispatcherTransport(self._stub, tenant, otel_context.get_current(), self._ends)

    def close(self) -> None:
        """Closes the channel once the session ends in flight are answered (bounded wait)."""
        if not self._ends.drain(CLOSE_DRAIN_SECONDS):
            _log.info("closing with %d GPU session ends unanswered", self._ends.in_flight)
        self._channel.close()


class _BackgroundEnds:
    """Counts the session ends in flight, at most `limit` (thread-safe)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._changed = threading.Condition()
        self.in_flight = 0

    def try_acquire(self) -> bool:
        with self._changed:
            if self.in_flight >= self._limit:
                return False
            self.in_flight += 1
            return True

    def release(self) -> None:
        with self._changed:
            self.in_flight -= 1
            self._changed.notify_all()

    def drain(self, timeout_seconds: float) -> bool:
        """Waits until none is in flight; False if some still are after the timeout."""
        with self._changed:
            return self._changed.wait_for(lambda: self.in_flight == 0, timeout_seconds)


class DispatcherTransport:
    """Sends one session's batches for one tenant (a `cuda_batch.Transport`)."""

    def __init__(
        self,
        stub: Any,
        tenant: str,
        trace_context: otel_context.Context,
        ends: _BackgroundEnds | None = None,
    ) -> None:
        self._stub = stub
        self._tenant = tenant
        self._trace_context = trace_context
        self._ends = ends if ends is not None else _BackgroundEnds(MAX_BACKGROUND_ENDS)

    def execute(self, request: Batch, timeout_seconds: float) -> BatchResult:
        wire = request_to_wire(request, self._tenant)
        token = otel_context.attach(self._trace_context)
        try:
            response = self._stub.Execute(
                wire, timeout=timeout_seconds, metadata=((TENANT_METADATA_KEY, self._tenant),)
            )
        except grpc.RpcError as exc:
            raise transport_error(exc) from None
        finally:
            otel_context.detach(token)
        return BatchResult(
            results=tuple(CommandResult(r.abi_code, r.message, r.data) for r in response.results),
            buffers={buffer.buffer_id: buffer.data for buffer in response.buffers},
            kernel_seconds=response.kernel_time.ToTimedelta().total_seconds(),
            tenant_kernel_seconds=response.tenant_kernel_time.ToTimedelta().total_seconds(),
        )

    def end_session_later(self, request: Batch, timeout_seconds: float) -> bool:
        """Sends an end-of-session request without waiting for it (a `BackgroundTransport`).

        Returns:
            False when `MAX_BACKGROUND_ENDS` are in flight already (the caller sends it).
        """
        if request.commands or request.regions or not request.end_session:
            raise ValueError("only an empty end-of-session request is sent in the background")
        if not self._ends.try_acquire():
            return False
        wire = request_to_wire(request, self._tenant)
        try:
            self._send_end(wire, time.monotonic() + timeout_seconds)
        except BaseException:
            self._ends.release()
            raise
        return True

    def _send_end(self, wire: pb.ExecuteRequest, deadline: float) -> None:
        """Starts the call; its completion releases the slot or retries while busy."""
        token = otel_context.attach(self._trace_context)
        try:
            call = self._stub.Execute.future(
                wire,
                timeout=max(0.0, deadline - time.monotonic()),
                metadata=((TENANT_METADATA_KEY, self._tenant),),
            )
        finally:
            otel_context.detach(token)
        call.add_done_callback(lambda done: self._ended(done, wire, deadline))

    def _ended(self, call: Any, wire: pb.ExecuteRequest, deadline: float) -> None:
        try:
            call.result()
        except grpc.RpcError as exc:
            failure = transport_error(exc)
            delay = failure.retry_after_seconds
            if delay is not None and time.monotonic() + delay < deadline:
                timer = threading.Timer(delay, self._retry_end, (wire, deadline))
                timer.daemon = True
                timer.start()
                return
            _log.info("ending a GPU session failed: %s", failure.message)
        except BaseException:  # cancelled (the channel closed) or unexpected
            _log.info("ending a GPU session failed", exc_info=True)
        self._ends.release()

    def _retry_end(self, wire: pb.ExecuteRequest, deadline: float) -> None:
        try:
            self._send_end(wire, deadline)
        except BaseException:
            _log.info("ending a GPU session failed", exc_info=True)
            self._ends.release()


def transport_error(exc: grpc.RpcError) -> TransportError:
    """The ABI outcome of a failed Execute: busy (retry later), unreachable, or refused."""
    error = error_from_rpc(exc)
    if error.code == Code.RESOURCE_EXHAUSTED:
        return TransportError(
            AbiError.NOT_AVAILABLE,
            f"the GPU dispatcher is busy ({error.reason}): {error.message}",
            retry_after_seconds=error.retry_after_seconds or 0.05,
        )
    if error.code in _UNREACHABLE:
        return TransportError(
            AbiError.NOT_AVAILABLE, f"the GPU dispatcher is unavailable: {error.message}"
        )
    return TransportError(
        AbiError.INTERNAL, f"the GPU dispatcher refused the batch ({error.reason})"
    )


def request_to_wire(request: Batch, tenant: str) -> pb.ExecuteRequest:
    """The ExecuteRequest of a batch.

    Launches of a batch mostly repeat the same geometry and arguments: each distinct
    argument tuple and dimension triple is converted once per batch, and the messages are
    built from keyword arguments (no `CopyFrom` per field).
    """
    args_memo: dict[tuple[object, ...], list[pb.KernelArg]] = {}
    dims_memo: dict[tuple[int, int, int], pb.Dim3] = {}
    return pb.ExecuteRequest(
        tenant=tenant,
        session_id=request.session_id,
        end_session=request.end_session,
        buffers=[
            pb.StagedBuffer(
                buffer_id=region.buffer_id,
                data=region.data,
                guest_offset=region.guest_offset,
                copy_back=region.copy_back,
            )
            for region in request.regions
        ],
        commands=[_command_to_wire(command, args_memo, dims_memo) for command in request.commands],
    )


def _command_to_wire(
    command: Command,
    args_memo: dict[tuple[object, ...], list[pb.KernelArg]],
    dims_memo: dict[tuple[int, int, int], pb.Dim3],
) -> pb.Command:
    if isinstance(command, LaunchKernel):
        return pb.Command(launch=_launch_to_wire(command, args_memo, dims_memo))
    if isinstance(command, LoadKernel):
        return pb.Command(
            load=pb.LoadKernel(
                kernel_id=command.kernel_id,
                ptx=command.ptx,
                entry=command.entry,
                expected_ptx_digest=command.expected_digest,
            )
        )
    if isinstance(command, AllocBuffer):
        return pb.Command(
            alloc_buffer=pb.AllocBuffer(handle=command.handle, size_bytes=command.size_bytes)
        )
    if isinstance(command, FreeBuffer):
        return pb.Command(free_buffer=pb.FreeBuffer(handle=command.handle))
    if isinstance(command, WriteBuffer):
        return pb.Command(
            write_buffer=pb.WriteBuffer(
                handle=command.handle, offset_bytes=command.offset_bytes, data=command.data
            )
        )
    return pb.Command(
        read_buffer=pb.ReadBuffer(
            handle=command.handle,
            offset_bytes=command.offset_bytes,
            length_bytes=command.length_bytes,
        )
    )


def _dim3(dims: tuple[int, int, int], memo: dict[tuple[int, int, int], pb.Dim3]) -> pb.Dim3:
    found = memo.get(dims)
    if found is None:
        found = memo[dims] = pb.Dim3(x=dims[0], y=dims[1], z=dims[2])
    return found


def _launch_to_wire(
    command: LaunchKernel[KernelArg],
    args_memo: dict[tuple[object, ...], list[pb.KernelArg]],
    dims_memo: dict[tuple[int, int, int], pb.Dim3],
) -> pb.LaunchKernel:
    args = args_memo.get(command.args)
    if args is None:
        args = args_memo[command.args] = [_arg_to_wire(arg) for arg in command.args]
    return pb.LaunchKernel(
        kernel_id=command.kernel_id,
        grid=_dim3(command.grid, dims_memo),
        block=_dim3(command.block, dims_memo),
        shared_mem_bytes=command.shared_mem_bytes,
        args=args,
    )


def _arg_to_wire(arg: KernelArg) -> pb.KernelArg:
    if isinstance(arg, BufferRef):
        return pb.KernelArg(
            buffer=pb.BufferRef(
                buffer_id=arg.buffer_id,
                offset_bytes=arg.offset_bytes,
                length_bytes=arg.length_bytes,
            )
        )
    if isinstance(arg, ScalarArg):
        wire = pb.KernelArg()
        setattr(wire, _SCALAR_FIELDS[arg.tag], arg.value)
        return wire
    return pb.KernelArg(
        device_buffer=pb.DeviceBufferRef(handle=arg.handle, offset_bytes=arg.offset_bytes)
    )
