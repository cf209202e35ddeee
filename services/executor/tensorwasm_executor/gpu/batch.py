"""Queued GPU commands made into the batch the dispatcher receives, and its transport.

Pointer arguments become staged regions when the batch is sent: the ranges of all its
pointer arguments are merged where they overlap, each merged range is read from linear
memory once, and every argument refers to its region by id and offset. Launches of one
batch thus share their buffers, and see each other's writes, as under unified memory.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from tensorwasm_common.gpu_abi import AbiError, BufferRef
from tensorwasm_common.gpu_batch import (
    Batch,
    BatchResult,
    BufferCommand,
    Command,
    DeviceBufferRef,
    KernelArg,
    LaunchKernel,
    LoadKernel,
    StagedRegion,
    WriteBuffer,
)

from tensorwasm_executor.gpu.abi import ArgRecord, DeviceBufferRecord, PointerRecord


class GuestMemory(Protocol):
    """The linear memory of the guest's store (bounds are checked by the caller)."""

    def size(self) -> int:
        """The memory's current size in bytes."""
        ...

    def read(self, start: int, length: int) -> bytes:
        """A copy of `length` bytes from `start`."""
        ...

    def write(self, start: int, data: bytes) -> None:
        """Writes `data` at `start`."""
        ...


# A command as queued: a launch's pointers are still guest ranges (`PointerRecord`s).
QueuedCommand = LoadKernel | LaunchKernel[ArgRecord] | BufferCommand


def staged_bytes(command: QueuedCommand) -> int:
    """The bytes a queued command stages: a launch's pointer ranges (before any merging),
    a buffer write's data."""
    if isinstance(command, LaunchKernel):
        return sum(arg.length for arg in command.args if isinstance(arg, PointerRecord))
    if isinstance(command, WriteBuffer):
        return len(command.data)
    return 0


class TransportError(Exception):
    """The batch did not run: the ABI code its commands get, and when to retry (if ever)."""

    def __init__(self, code: AbiError, message: str, retry_after_seconds: float | None = None):
        """Records the code, the message and the retry delay.

        Args:
            code: The ABI code every command of the batch gets.
            message: Why, for the guest's `last_error`.
            retry_after_seconds: Set when the dispatcher asked to come back later.
        """
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_seconds = retry_after_seconds


class Transport(Protocol):
    """Sends a batch to the dispatcher and waits for its reply (on the guest's thread)."""

    def execute(self, request: Batch, timeout_seconds: float) -> BatchResult:
        """Runs the batch.

        Raises:
            TransportError: the batch did not run (unreachable, busy, refused).
        """
        ...


@runtime_checkable
class BackgroundTransport(Transport, Protocol):
    """A transport that can also end a session without the guest's thread waiting."""

    def end_session_later(self, request: Batch, timeout_seconds: float) -> bool:
        """Sends `request` (an empty end-of-session request) in the background.

        Returns:
            False when it did not take the request (its bound of requests in flight is
            reached): the caller sends it itself.
        """
        ...


def merge_ranges(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merges `(start, length)` ranges that overlap into `(start, end)` spans, sorted.

    Ranges that merely touch stay apart; an empty range joins a span that contains its
    offset (its end included), else it is a span of its own.
    """
    spans: list[list[int]] = []
    for start, length in sorted(ranges, key=lambda r: (r[0], -r[1])):
        end = start + length
        if spans and (start < spans[-1][1] or (length == 0 and start <= spans[-1][1])):
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    return [(start, end) for start, end in spans]


def build_request(
    session_id: str,
    commands: Sequence[QueuedCommand],
    memory: GuestMemory | None,
    *,
    copy_back: bool,
    end_session: bool = False,
) -> Batch:
    """The batch for queued commands: regions read from `memory`, pointers as refs.

    Args:
        session_id: The session.
        commands: Loads, queued launches and buffer commands, in order.
        memory: The guest's memory (only needed when a launch has a pointer argument).
        copy_back: Whether the written regions should come back.
        end_session: Whether this is the session's last request.
    """
    pointers = [
        (arg.offset, arg.length)
        for command in commands
        if isinstance(command, LaunchKernel)
        for arg in command.args
        if isinstance(arg, PointerRecord)
    ]
    spans = merge_ranges(pointers)
    if spans and memory is None:
        raise ValueError("pointer arguments need the guest's memory")
    regions = tuple(
        StagedRegion(
            buffer_id=index,
            data=memory.read(start, end - start) if memory else b"",
            guest_offset=start,
            copy_back=copy_back,
        )
        for index, (start, end) in enumerate(spans)
    )
    starts = [start for start, _ in spans]

    def sent_arg(arg: ArgRecord) -> KernelArg:
        if isinstance(arg, PointerRecord):
            index = _span_of(starts, spans, arg.offset, arg.length)
            return BufferRef(index, arg.offset - spans[index][0], arg.length)
        if isinstance(arg, DeviceBufferRecord):
            return DeviceBufferRef(arg.handle, arg.offset)
        return arg

    sent: list[Command] = []
    for command in commands:
        if isinstance(command, LaunchKernel):
            args = tuple(sent_arg(arg) for arg in command.args)
            grid, block, shared = command.grid, command.block, command.shared_mem_bytes
            sent.append(LaunchKernel(command.kernel_id, grid, block, shared, args))
        else:
            sent.append(command)
    return Batch(session_id, regions, tuple(sent), end_session)


def _span_of(starts: list[int], spans: list[tuple[int, int]], offset: int, length: int) -> int:
    """The index of the merged span holding `[offset, offset + length)`."""
    index = bisect.bisect_right(starts, offset) - 1
    while not (spans[index][0] <= offset and offset + length <= spans[index][1]):
        index -= 1  # only an empty range at a span's end can need a step back
    return index
