"""The per-call channel between a guest and its caller: staged input, emitted chunks, and
the call's deadline and cancellation as `wasi:tensor` and `wasi:scheduler` see them."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from enum import IntEnum

# Receives one emitted chunk on the guest's thread; returns False once its consumer (the
# streaming client) has gone away.
ChunkSink = Callable[[bytes], bool]

MAX_CHUNK_BYTES = 64 << 10
MAX_CHUNKS_BYTES_PER_CALL = 64 << 20
# `yield` answers "wind down" once the deadline is this close.
YIELD_THRESHOLD_SECONDS = 0.010
UNBOUNDED_MS = 0xFFFF_FFFF  # u32::MAX: no deadline


class EmitCode(IntEnum):
    """The return codes of `emit_chunk` and `flush` (wasi:tensor@0.1.0)."""

    ACCEPTED = 0
    NOT_ENABLED = -1  # no chunk channel for this call (e.g. a pre-initialisation run)
    OVER_CAP = -2  # a chunk over 64 KiB, or the call's chunks over 64 MiB
    CLIENT_GONE = -3  # the streaming client went away


class YieldVerdict(IntEnum):
    """The answers of `yield` (wasi:scheduler@0.1.0)."""

    CONTINUE = 0
    DEADLINE_NEAR = 1
    STOP = 2  # the deadline passed or the call was cancelled


class GuestChannel:
    """One call's `wasi:tensor` input and chunks, and its clock for `wasi:scheduler`.

    Without a sink the chunks are collected (`chunks`) for a unary answer; with one,
    each accepted chunk goes to it as the guest emits it and nothing is kept.
    """

    def __init__(
        self,
        guest_input: bytes = b"",
        sink: ChunkSink | None = None,
        *,
        max_chunk_bytes: int = MAX_CHUNK_BYTES,
        max_total_bytes: int = MAX_CHUNKS_BYTES_PER_CALL,
    ) -> None:
        self.input = guest_input
        self.chunks = bytearray()
        self.chunk_count = 0
        self._sink = sink
        self.max_chunk_bytes = max_chunk_bytes
        self._max_total = max_total_bytes
        self._emitted = 0
        self._read = 0
        self._client_gone = False
        self._deadline = math.inf
        self._events: tuple[threading.Event, ...] = ()

    def arm(self, deadline: float, events: Sequence[threading.Event]) -> None:
        """Starts a call: its deadline (`time.monotonic()`) and its cancel events.

        A resident instance re-arms its channel for each call; the cursor of
        `read_input` and the chunk total start again.
        """
        self._deadline = deadline
        self._events = tuple(events)
        self._emitted = 0
        self._read = 0
        self.chunks = bytearray()
        self.chunk_count = 0

    def emit(self, data: bytes) -> EmitCode:
        """Accepts one chunk whole, or none of it."""
        if self._client_gone:
            return EmitCode.CLIENT_GONE
        if len(data) > self.max_chunk_bytes or self._emitted + len(data) > self._max_total:
            return EmitCode.OVER_CAP
        if self._sink is None:
            self.chunks += data
        elif not self._sink(data):
            self._client_gone = True
            return EmitCode.CLIENT_GONE
        self._emitted += len(data)
        self.chunk_count += 1
        return EmitCode.ACCEPTED

    def flush(self) -> EmitCode:
        """Chunks are handed on as they are emitted; a flush only reports a lost client."""
        return EmitCode.CLIENT_GONE if self._client_gone else EmitCode.ACCEPTED

    def read_input(self, limit: int) -> bytes:
        """The next at most `limit` bytes of the input (a cursor: b"" once all was read)."""
        data = self.input[self._read : self._read + limit]
        self._read += len(data)
        return data

    def remaining_seconds(self) -> float:
        """Seconds left before the call's deadline (inf: none)."""
        return self._deadline - time.monotonic()

    def verdict(self) -> YieldVerdict:
        """What `yield` answers now."""
        if any(event.is_set() for event in self._events):
            return YieldVerdict.STOP
        remaining = self.remaining_seconds()
        if remaining <= 0:
            return YieldVerdict.STOP
        if remaining < YIELD_THRESHOLD_SECONDS:
            return YieldVerdict.DEADLINE_NEAR
        return YieldVerdict.CONTINUE

    def remaining_ms(self) -> int:
        """`deadline_remaining_ms` as a u32: milliseconds left, 0 once passed, u32::MAX
        when unbounded."""
        remaining = self.remaining_seconds()
        if math.isinf(remaining):
            return UNBOUNDED_MS
        return min(max(0, int(remaining * 1000)), UNBOUNDED_MS - 1)


# `channel` is the GuestChannel of the call running on this thread (set by CallStore.run).
CURRENT = threading.local()


def current_channel() -> GuestChannel | None:
    """The channel of the call running on this thread, if any."""
    channel: GuestChannel | None = getattr(CURRENT, "channel", None)
    return channel
