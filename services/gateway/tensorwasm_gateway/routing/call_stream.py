"""The gateway's `Calls` stream to one executor replica: its short Invoke and
CallInstance calls as frames (see `tensorwasm_common.frames` for why).

The stream is opened by the first call that needs it and is open once the executor's
first frame arrives; a call is written only then, so a stream that cannot be opened
fails the call as grpc fails a unary call that never left (the caller's failover applies
unchanged). Each call gets a frame id, its own timer (the unary call's timeout) and a
CLIENT span; its answer or error is raised as the unary call's would be. A caller that
gives up sends a cancel frame, which stops the guest as a cancelled unary call does.
When the stream is lost, every call waiting on it fails UNAVAILABLE (it may have run:
never resent), and the next call opens a new one. An executor without `Calls`
(UNIMPLEMENTED: an older version) is called unary from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
from typing import Any

import grpc
from prometheus_client import Counter
from tensorwasm.executor.v1 import executor_service_pb2 as pb
from tensorwasm.executor.v1 import executor_service_pb2_grpc as pb_grpc
from tensorwasm_common.frames import MAX_ANSWER_KEY, frame_error, local_error
from tensorwasm_common.rpc_tracing import FrameTracing

_log = logging.getLogger(__name__)
_SERVICE = pb.DESCRIPTOR.services_by_name["ExecutorService"].full_name
METHODS = {"invoke": f"/{_SERVICE}/Invoke", "call_instance": f"/{_SERVICE}/CallInstance"}
_TRACING = FrameTracing()
STREAMS_OPENED = Counter(
    "tensorwasm_gateway_executor_call_streams_opened",
    "Call streams opened to each executor replica (one while all is well).",
    ["replica"],
)
# A call's timer fires this long after its timeout. When the timeout is what was left of
# the request's own deadline, grpc cancels the gateway's handler at that deadline and the
# caller gets DEADLINE_EXCEEDED, as with a unary executor call (whose failure grpc raises
# only after that cancellation); a timer firing at the same moment could race it and
# answer the caller UNAVAILABLE first. With no earlier deadline, the call fails this
# much later than its timeout. The frame sent to the executor carries the exact timeout.
EXPIRY_SLACK_SECONDS = 0.1


class NotRunError(grpc.aio.AioRpcError):
    """The executor answered that it did not start the call (it is shutting down): the
    call may go to another replica."""


class StreamUnsupportedError(Exception):
    """The replica has no `Calls` method: call it unary."""


def _not_run(status: Any) -> NotRunError:
    return NotRunError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details=status.message or "the call was not run",
    )


class CallStream:
    """One replica's Calls stream (see the module doc)."""

    def __init__(
        self, stub: pb_grpc.ExecutorServiceStub, address: str, *, max_receive_bytes: int
    ) -> None:
        self._stub = stub
        self._address = address
        # Sent when the stream opens: the executor fails a call whose answer is bigger
        # (a message over the channel's cap would end the stream with all its calls).
        self._metadata = ((MAX_ANSWER_KEY, str(max_receive_bytes)),)
        self._call: Any = None  # the open stream-stream call
        self._opening: asyncio.Task[Any] | None = None
        # Calls written and not answered: call id -> (future, timer, the stream it is on).
        # Ids are unique across streams; a lost stream fails only its own calls.
        self._pending: dict[int, tuple[asyncio.Future[Any], asyncio.TimerHandle, Any]] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()  # one write in flight per call
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        self.unsupported = False

    @property
    def in_flight(self) -> int:
        """Calls written and not yet answered, on any of its streams."""
        return len(self._pending)

    async def call(
        self, kind: str, request: Any, *, timeout_seconds: float, request_id: str = ""
    ) -> Any:
        """Runs one call (`kind`: `invoke` or `call_instance`) and returns its response.

        Raises:
            grpc.aio.AioRpcError: what the unary call would have raised.
            StreamUnsupportedError: the replica has no Calls method (nothing was sent).
        """
        stream = self._call
        if stream is None:
            try:
                stream = await asyncio.wait_for(self._open(), timeout_seconds)
            except TimeoutError:  # connected, but the executor never said it is open
                raise local_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        loop = asyncio.get_running_loop()
        call_id = next(self._ids)
        carrier, span = _TRACING.start(METHODS[kind])
        frame = pb.CallsRequest(
            call_id=call_id,
            request_id=request_id,
            traceparent=carrier.get("traceparent", ""),
            tracestate=carrier.get("tracestate", ""),
            **{kind: request},
        )
        nanos = int(timeout_seconds * 1e9)
        frame.timeout.seconds, frame.timeout.nanos = divmod(nanos, 1_000_000_000)
        future: asyncio.Future[Any] = loop.create_future()
        timer = loop.call_later(timeout_seconds + EXPIRY_SLACK_SECONDS, self._expire, call_id)
        self._pending[call_id] = (future, timer, stream)
        code = grpc.StatusCode.OK
        details = None
        try:
            try:
                async with self._lock:
                    await stream.write(frame)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                if self._call is stream:  # the next call opens a new one at once
                    self._call = None
                raise local_error(
                    grpc.StatusCode.UNAVAILABLE, f"the call stream to {self._address} ended"
                ) from exc
            return await future
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            if self._forget(call_id):  # the caller gave up: stop the call
                self._send_cancel(stream, call_id)
            raise
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details()
            raise
        finally:
            self._forget(call_id)  # still there only when the write failed
            _TRACING.end(span, code, details)

    async def _open(self) -> Any:
        if self.unsupported:
            raise StreamUnsupportedError(self._address)
        if self._opening is None:
            # In a context of its own: the stream outlives the call that opens it (its
            # deadline and trace are that call's alone).
            self._opening = asyncio.get_running_loop().create_task(
                self._start(), context=contextvars.Context()
            )
        opening = self._opening
        try:
            return await asyncio.shield(opening)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                self.unsupported = True
                raise StreamUnsupportedError(self._address) from exc
            raise

    async def _start(self) -> Any:
        try:
            stream: Any = self._stub.Calls(wait_for_ready=False, metadata=self._metadata)  # type: ignore[call-arg]  # stubs: aio's reader/writer form takes no iterator
            first = await stream.read()
            if first is grpc.aio.EOF:
                raise local_error(
                    grpc.StatusCode.UNAVAILABLE, f"the executor {self._address} ended the stream"
                )
            if self._closed:
                stream.cancel()
                raise local_error(grpc.StatusCode.CANCELLED, "the gateway is closing")
            self._call = stream
            self._spawn(self._read(stream))
            STREAMS_OPENED.labels(self._address).inc()
            return stream
        finally:
            self._opening = None

    async def _read(self, stream: Any) -> None:
        error = local_error(
            grpc.StatusCode.UNAVAILABLE, f"the executor {self._address} ended the call stream"
        )
        try:
            while (frame := await stream.read()) is not grpc.aio.EOF:
                entry = self._pending.pop(frame.call_id, None)
                if entry is None:  # expired or cancelled meanwhile
                    continue
                future, timer, _ = entry
                timer.cancel()
                if future.done():
                    continue
                result = frame.WhichOneof("result")
                if frame.not_run:
                    future.set_exception(_not_run(frame.error))
                    self._retire(stream)
                elif result == "error":
                    future.set_exception(frame_error(frame.error))
                elif result is None:
                    future.set_exception(
                        local_error(grpc.StatusCode.INTERNAL, "an empty answer on the call stream")
                    )
                else:
                    future.set_result(getattr(frame, result))
        except grpc.aio.AioRpcError as exc:
            # Never a "failed to connect" message: these calls were sent, so they must
            # not be failed over (they may have run).
            error = local_error(
                grpc.StatusCode.UNAVAILABLE,
                f"the call stream to {self._address} was lost ({exc.code().name})",
            )
        except asyncio.CancelledError:
            error = local_error(grpc.StatusCode.UNAVAILABLE, "the gateway is closing")
            raise
        finally:
            if self._call is stream:
                self._call = None
            self._fail_pending(error, stream)

    def _retire(self, stream: Any) -> None:
        """Takes no more calls on `stream` (its executor is shutting down): the next call
        opens a new one, which a replica that has stopped refuses (failover); the calls
        written to it are still answered, and the executor ends it after them."""
        if self._call is stream:
            self._call = None
            self._send_done(stream)

    def _send_done(self, stream: Any) -> None:
        async def done() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                async with self._lock:
                    await stream.done_writing()

        self._spawn(done())

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _fail_pending(self, error: grpc.aio.AioRpcError, stream: Any = None) -> None:
        """Fails the calls waiting on `stream` (None: on any)."""
        lost = [i for i, entry in self._pending.items() if stream is None or entry[2] is stream]
        for call_id in lost:
            future, timer, _ = self._pending.pop(call_id)
            timer.cancel()
            if not future.done():
                future.set_exception(error)

    def _forget(self, call_id: int) -> bool:
        """Drops a call still waiting; True when it was."""
        entry = self._pending.pop(call_id, None)
        if entry is None:
            return False
        entry[1].cancel()
        return True

    def _expire(self, call_id: int) -> None:
        entry = self._pending.pop(call_id, None)
        if entry is None:
            return
        future, _, stream = entry
        if not future.done():
            future.set_exception(
                local_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            )
        self._send_cancel(stream, call_id)

    def _send_cancel(self, stream: Any, call_id: int) -> None:
        async def cancel() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                async with self._lock:
                    await stream.write(pb.CallsRequest(call_id=call_id, cancel=pb.CallsCancel()))

        self._spawn(cancel())

    async def close(self) -> None:
        """Ends the stream; calls still waiting fail UNAVAILABLE."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()
        for task in (self._opening, *self._background):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self._fail_pending(local_error(grpc.StatusCode.UNAVAILABLE, "the gateway is closing"))
