"""uvicorn's h11 connection with the bounds it lacks: a connection cap, read deadlines.

Hand-written because uvicorn has no hook for them: its `limit_concurrency` answers 503
only once a request head arrives (idle sockets still hold their descriptors, which the
gRPC server in the same process needs), it never times out a connection that has not
sent its first request, and h11 waits for a request head or body without a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
from http import HTTPStatus
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from tensorwasm_gateway.http.errors import JSON_TYPE, refusal_body


@dataclasses.dataclass(frozen=True)
class ConnectionLimits:
    """How long a client may take and how many may be connected at once."""

    # A connection with no request in progress is closed after this long.
    idle_timeout_seconds: float = 5.0
    # A request head must arrive within this long of its first byte, and a body may
    # pause at most this long between two reads.
    read_timeout_seconds: float = 10.0
    # Connections past this many are answered 503 and closed as they are accepted.
    max_connections: int = 256


class GuardedH11Protocol(H11Protocol):
    """One HTTP/1.1 connection within `limits` (bound by `with_limits`)."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()

    @classmethod
    def with_limits(cls, limits: ConnectionLimits) -> type[GuardedH11Protocol]:
        """This protocol class bound to `limits` (uvicorn builds one per connection)."""
        return type(cls.__name__, (cls,), {"limits": limits})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn's keep-alive timer, in seconds as given (uvicorn's Config takes whole ones)
        self.timeout_keep_alive = self.limits.idle_timeout_seconds  # type: ignore[assignment]
        self._read_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        if len(self.connections) > self.limits.max_connections:
            self._answer_and_close(503, "unavailable", "too many connections")
            return
        # uvicorn times out idle keep-alive connections, not fresh ones: do it here.
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_read_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_reads()

    def send_400_response(self, msg: str) -> None:
        """A malformed request (h11 refused it): the JSON error envelope, then close."""
        self._answer_and_close(400, "bad_request", msg)

    def _watch_reads(self) -> None:
        """Arms the read deadline while a request is coming in: once for a head (from
        its first byte), anew after each read of a body."""
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        head_pending = state is h11.IDLE and bool(self.conn.trailing_data[0])
        if state is h11.SEND_BODY:
            self._cancel_read_deadline()
        elif not head_pending:
            self._cancel_read_deadline()
            return
        if self._read_deadline is None:
            self._read_deadline = self.loop.call_later(
                self.limits.read_timeout_seconds, self._read_timed_out
            )

    def _read_timed_out(self) -> None:
        self._read_deadline = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:  # the application is not reading: not the client's delay
            self._watch_reads()
            return
        state = self.conn.their_state
        if state is h11.IDLE and self.conn.trailing_data[0]:
            self._answer_and_close(408, "request_timeout", "request head not received in time")
        elif state is h11.SEND_BODY:
            self._answer_and_close(408, "request_timeout", "request body not received in time")

    def _cancel_read_deadline(self) -> None:
        if self._read_deadline is not None:
            self._read_deadline.cancel()
            self._read_deadline = None

    def _answer_and_close(self, status: int, kind: str, message: str) -> None:
        """Writes a complete JSON error response past h11 (the connection ends here, in
        whatever state its request was) and closes."""
        self._unset_keepalive_if_required()
        self._cancel_read_deadline()
        if self.cycle is not None:
            if self.cycle.response_started:  # too late for another response
                self.transport.close()
                return
            self.cycle.disconnected = True  # the application's response goes nowhere
            self.cycle.message_event.set()
        body = refusal_body(kind, message)
        head = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            f"content-type: {JSON_TYPE}\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        )
        self.transport.write(head.encode("ascii") + body)
        self.transport.close()
