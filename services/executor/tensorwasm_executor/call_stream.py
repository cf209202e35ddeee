"""The executor's `Calls` stream: Invoke and CallInstance calls carried as frames.

See `tensorwasm_common.frames` for why. Each request frame runs as a task of its own,
through the same wrapped handler a unary call of its method runs (`behaviors`, built by
`HopInterceptor.frame_behavior`), under the frame's deadline and trace context, and is
answered by one frame. Answers are written one at a time (grpc allows one write in
flight per call), in the order the calls finish, not the order they came in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from tensorwasm.executor.v1 import executor_service_pb2 as pb
from tensorwasm_common.channels import REQUEST_ID_KEY
from tensorwasm_common.errors import (
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
)
from tensorwasm_common.frames import MAX_ANSWER_KEY, FrameContext, status_of
from tensorwasm_common.status import domain_of, to_status_proto

from tensorwasm_executor.call_log import log_call

Behavior = Callable[[Any, FrameContext], Awaitable[Any]]
_DOMAIN = domain_of("executor")
_log = logging.getLogger(__name__)


class CallStreams:
    """Serves Calls streams with the wrapped unary behaviour of each carried method,
    keyed by the request frame's field (`invoke`, `call_instance`)."""

    def __init__(
        self,
        behaviors: Mapping[str, tuple[str, Behavior]],
        *,
        call_log: bool = False,
        max_answer_bytes: int = 64 << 20,
    ) -> None:
        self._behaviors = dict(behaviors)  # field -> (method name, behaviour)
        self._call_log = call_log
        # The server's send cap: a bigger answer would end the whole stream, and with it
        # every other call on it; that call alone fails instead, as its RPC would.
        self._max_answer_bytes = max_answer_bytes
        self._draining = False

    def drain(self) -> None:
        """From now on, answers new calls not run (the server is shutting down: a client
        sends them to another replica); the calls running finish."""
        self._draining = True

    async def serve(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Reads frames until the client half-closes, then lets the calls running finish;
        a stream that is cancelled or lost stops them."""
        cap = _client_cap(context) or self._max_answer_bytes
        stream = _Stream(context, min(self._max_answer_bytes, cap), self._call_log)
        running = stream.running
        loop = asyncio.get_running_loop()
        await stream.answer(pb.CallsResponse())  # the stream is open
        try:
            while (frame := await context.read()) is not grpc.aio.EOF:
                assert isinstance(frame, pb.CallsRequest)
                kind = frame.WhichOneof("call")
                if kind == "cancel":
                    task = running.pop(frame.call_id, None)
                    if task is not None:
                        task.cancel()
                    continue
                carried = self._behaviors.get(kind or "")
                if carried is None or frame.call_id == 0 or frame.call_id in running:
                    await stream.answer(_refusal(frame, kind))
                    continue
                if self._draining:
                    await stream.answer(_not_run(frame.call_id))
                    continue
                running[frame.call_id] = loop.create_task(stream.run(frame, kind or "", carried))
            if running:
                await asyncio.wait(list(running.values()))
        finally:
            for task in running.values():
                task.cancel()


class _Stream:
    """One Calls stream being served: its calls running and its answers."""

    def __init__(
        self, context: grpc.aio.ServicerContext[Any, Any], max_answer: int, call_log: bool
    ) -> None:
        self._context = context
        self._lock = asyncio.Lock()  # one write in flight per call
        self._max_answer = max_answer
        self._call_log = call_log
        self.running: dict[int, asyncio.Task[None]] = {}

    async def answer(self, frame: pb.CallsResponse) -> None:
        """Writes one frame (after those being written)."""
        async with self._lock:
            await self._context.write(frame)

    async def run(self, frame: pb.CallsRequest, kind: str, carried: tuple[str, Behavior]) -> None:
        """Runs the frame's call and answers it (unless it is cancelled first)."""
        method, behavior = carried
        call_id = frame.call_id
        timer = None
        try:
            metadata = _metadata(frame)
            if self._call_log:
                log_call(method, frame.request_id)
            deadline = None
            if frame.HasField("timeout"):
                remaining = frame.timeout.seconds + frame.timeout.nanos * 1e-9
                deadline = time.monotonic() + remaining
                task = asyncio.current_task()
                assert task is not None
                timer = asyncio.get_running_loop().call_later(max(remaining, 0.0), task.cancel)
            context = FrameContext(metadata, deadline)
            response: Any = None
            try:
                response = await behavior(getattr(frame, kind), context)
            except asyncio.CancelledError:
                return  # cancelled, past its deadline or the stream ended: nobody waits
            except grpc.aio.AbortError:
                pass  # `context.abort`: the status it set is the answer, as grpc sends it
            status = status_of(context)
            if status is not None:
                reply = pb.CallsResponse(call_id=call_id, error=status)
            else:
                reply = pb.CallsResponse(call_id=call_id, **{kind: response})
                if reply.ByteSize() > self._max_answer:
                    reply = _too_large(call_id, reply.ByteSize(), self._max_answer)
            try:
                await self.answer(reply)
            except Exception:  # the stream ended meanwhile: nobody to answer
                _log.debug("call %d answered after its stream ended", call_id)
        finally:
            if timer is not None:
                timer.cancel()
            self.running.pop(call_id, None)


def _client_cap(context: grpc.aio.ServicerContext[Any, Any]) -> int:
    """The largest answer the client said it receives (MAX_ANSWER_KEY), or 0."""
    for key, value in context.invocation_metadata() or ():
        if key == MAX_ANSWER_KEY and isinstance(value, str) and value.isdigit():
            return int(value)
    return 0


def _metadata(frame: pb.CallsRequest) -> tuple[tuple[str, str], ...]:
    """The frame's call metadata, as the unary call would carry it."""
    metadata: tuple[tuple[str, str], ...] = ()
    if frame.traceparent:
        metadata += (("traceparent", frame.traceparent),)
        if frame.tracestate:
            metadata += (("tracestate", frame.tracestate),)
    if frame.request_id:
        metadata += ((REQUEST_ID_KEY, frame.request_id),)
    return metadata


def _too_large(call_id: int, size: int, limit: int) -> pb.CallsResponse:
    error = ResourceExhaustedError(
        f"the call's answer is {size} bytes, more than the {limit} this executor sends",
        metadata={"size_bytes": str(size), "limit_bytes": str(limit)},
    )
    return pb.CallsResponse(call_id=call_id, error=to_status_proto(error, _DOMAIN))


def _not_run(call_id: int) -> pb.CallsResponse:
    error = UnavailableError("the executor is shutting down: the call was not run")
    return pb.CallsResponse(call_id=call_id, not_run=True, error=to_status_proto(error, _DOMAIN))


def _refusal(frame: pb.CallsRequest, kind: str | None) -> pb.CallsResponse:
    """The answer to a frame that starts no call: no call in it, or a call id that is 0
    or already in flight."""
    if kind is None or kind not in ("invoke", "call_instance"):
        message = "the frame carries no call this stream runs"
    elif frame.call_id == 0:
        message = "call_id 0 is reserved"
    else:
        message = f"call {frame.call_id} is already running on this stream"
    error = InvalidArgumentError(message, metadata={"call_id": str(frame.call_id)})
    return pb.CallsResponse(call_id=frame.call_id, error=to_status_proto(error, _DOMAIN))
