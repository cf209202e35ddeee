"""A batch of queued GPU commands as the dispatcher receives it, and its transport.

Pointer arguments become staged regions when the batch is sent: the ranges of all its
pointer arguments are merged where they overlap, each merged range is read from linear
memory once, and every argument refers to its region by id and offset. Launches of one
batch thus share their buffers, and see each other's writes, as under unified memory.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from tensorwasm_common.gpu_abi import AbiError, BufferRef, Dim3

from tensorwasm_executor.gpu.abi import ArgRecord, PointerRecord


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


@dataclass(frozen=True)
class Region:
    """A staged region: bytes of linear memory from `guest_offset`."""

    buffer_id: int
    guest_offset: int
    data: bytes = field(repr=False)
    copy_back: bool


@dataclass(frozen=True)
class LoadKernel:
    """Load PTX as the session's kernel `kernel_id`."""

    kernel_id: int
    ptx: bytes = field(repr=False)
    entry: str


@dataclass(frozen=True)
class LaunchKernel:
    """A launch, as queued (pointers are guest ranges) or as sent (pointers are refs)."""

    kernel_id: int
    grid: Dim3
    block: Dim3
    shared_mem_bytes: int
    args: tuple[ArgRecord | BufferRef, ...]

    @property
    def staged_bytes(self) -> int:
        """The bytes its pointer arguments cover (before any merging)."""
        return sum(arg.length for arg in self.args if isinstance(arg, PointerRecord))


@dataclass(frozen=True)
class AllocBuffer:
    """Allocate a device-resident buffer as the session's `handle` (extension)."""

    handle: int
    size_bytes: int


@dataclass(frozen=True)
class FreeBuffer:
    """Free the session's device buffer `handle` (extension)."""

    handle: int


@dataclass(frozen=True)
class WriteBuffer:
    """Copy bytes (read from linear memory when queued) into a device buffer (extension)."""

    handle: int
    offset_bytes: int
    data: bytes = field(repr=False)

    @property
    def staged_bytes(self) -> int:
        """The bytes it carries."""
        return len(self.data)


@dataclass(frozen=True)
class ReadBuffer:
    """Copy bytes of a device buffer back; they come in the result's `data` (extension)."""

    handle: int
    offset_bytes: int
    length_bytes: int


Command = LoadKernel | LaunchKernel | AllocBuffer | FreeBuffer | WriteBuffer | ReadBuffer


@dataclass(frozen=True)
class BatchRequest:
    """One Execute request of a session."""

    session_id: str
    regions: tuple[Region, ...]
    commands: tuple[Command, ...]
    end_session: bool = False


@dataclass(frozen=True)
class CommandResult:
    """A command's ABI code (0: success), message, and the bytes a buffer read read."""

    code: int
    message: str = ""
    data: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class BatchReply:
    """The dispatcher's answer: one result per command, the copied-back buffers, the
    batch's kernel time and the tenant's kernel time in all."""

    results: tuple[CommandResult, ...]
    buffers: Mapping[int, bytes]
    kernel_seconds: float = 0.0
    tenant_kernel_seconds: float = 0.0


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

    def execute(self, request: BatchRequest, timeout_seconds: float) -> BatchReply:
        """Runs the batch.

        Raises:
            TransportError: the batch did not run (unreachable, busy, refused).
        """
        ...


@runtime_checkable
class BackgroundTransport(Transport, Protocol):
    """A transport that can also end a session without the guest's thread waiting."""

    def end_session_later(self, request: BatchRequest, timeout_seconds: float) -> bool:
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
    commands: Sequence[Command],
    memory: GuestMemory | None,
    *,
    copy_back: bool,
    end_session: bool = False,
) -> BatchRequest:
    """The request for queued commands: regions read from `memory`, pointers as refs.

    Args:
        session_id: The session.
        commands: Loads and queued launches, in order.
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
        Region(index, start, memory.read(start, end - start) if memory else b"", copy_back)
        for index, (start, end) in enumerate(spans)
    )
    starts = [start for start, _ in spans]

    def ref(arg: PointerRecord) -> BufferRef:
        index = _span_of(starts, spans, arg.offset, arg.length)
        return BufferRef(index, arg.offset - spans[index][0], arg.length)

    sent: list[Command] = []
    for command in commands:
        if isinstance(command, LaunchKernel):
            args = tuple(ref(a) if isinstance(a, PointerRecord) else a for a in command.args)
            grid, block, shared = command.grid, command.block, command.shared_mem_bytes
            sent.append(LaunchKernel(command.kernel_id, grid, block, shared, args))
        else:
            sent.append(command)
    return BatchRequest(session_id, regions, tuple(sent), end_session)


def _span_of(starts: list[int], spans: list[tuple[int, int]], offset: int, length: int) -> int:
    """The index of the merged span holding `[offset, offset + length)`."""
    index = bisect.bisect_right(starts, offset) - 1
    while not (spans[index][0] <= offset and offset + length <= spans[index][1]):
        index -= 1  # only an empty range at a span's end can need a step back
    return index
