"""The backend interface: what the dispatcher needs from a device to run a batch.

A backend loads kernels, stages host bytes into device buffers, launches kernels on a
session's stream and copies buffers back. Work on a stream may run asynchronously: a
launch is queued, and `finish` waits (bounded by the call's deadline) for what the stream
holds, reporting a failure of the queued launches and their kernel time. Failures are
`AbiFailure`s carrying the guest ABI code (the dispatcher reports them per command);
anything else is a bug (-7).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field

from tensorwasm_common.gpu_abi import AbiError, AbiFailure, Dim3, ScalarArg

from tensorwasm_dispatcher.backends.discovery import BackendKind

# A device allocation's base is aligned to this many bytes (cuMemAlloc's guarantee). A
# staged region starts that far into its allocation modulo this, so the device pointer of
# a guest address has the guest address's alignment (what unified memory would give).
DEVICE_ALIGNMENT_BYTES = 256
# The device allocates in units of this many bytes: what a buffer costs against the quota.
ALLOCATION_GRANULARITY_BYTES = 512


def lead_bytes(guest_offset: int) -> int:
    """The bytes before a staged region's data in its allocation (see above)."""
    return guest_offset % DEVICE_ALIGNMENT_BYTES


def charged_bytes(size_bytes: int) -> int:
    """What an allocation of `size_bytes` costs against a tenant's quota."""
    granules = -(-max(size_bytes, 1) // ALLOCATION_GRANULARITY_BYTES)
    return granules * ALLOCATION_GRANULARITY_BYTES


class DeadlineExceeded(AbiFailure):
    """The stream's work did not finish before the call's deadline: the session is ended
    (its stream may still be running a kernel that never ends)."""

    def __init__(self, message: str) -> None:
        super().__init__(AbiError.LAUNCH_FAILED, message)


class DeviceBuffer(abc.ABC):
    """Bytes staged on the device for one request (host memory on the cpu backend)."""

    size_bytes: int


@dataclass(frozen=True)
class BufferArg:
    """A pointer kernel argument: a byte range of a staged buffer.

    `guest_offset` is where the range starts in the guest's linear memory: under unified
    memory that address is the device pointer, so its alignment is the one the kernel sees.
    """

    buffer: DeviceBuffer = field(repr=False)
    offset_bytes: int
    length_bytes: int
    guest_offset: int


LaunchArg = ScalarArg | BufferArg


@dataclass(frozen=True)
class LaunchResult:
    """What a launch did: how long the kernel ran, and which arguments it may have written.

    `written` holds the positions (in the argument list) of the pointer arguments whose
    bytes may have changed: the ones to copy back.
    """

    kernel_seconds: float
    written: frozenset[int]


class Kernel(abc.ABC):
    """A loaded kernel (a module's entry point), owned by one session.

    `device_bytes` is the device memory its module holds (code, globals, constants), which
    counts against the tenant's quota while it is loaded.
    """

    entry: str
    device_bytes: int = 0


class Stream:
    """The ordered queue of one session's work (a CUDA stream on the cuda backend)."""


class Backend(abc.ABC):
    """A device that runs kernels; implementations must be safe to call from many threads."""

    kind: BackendKind

    @abc.abstractmethod
    def open_stream(self) -> Stream:
        """A stream for a new session."""

    @abc.abstractmethod
    def close_stream(self, stream: Stream) -> None:
        """Releases a session's stream (its work has finished)."""

    @abc.abstractmethod
    def load(self, ptx: bytes, entry: str) -> Kernel:
        """Loads PTX (already checked to declare `entry`) and finds the entry point.

        Raises:
            AbiFailure: NOT_AVAILABLE (this backend cannot run it), MALFORMED_PTX.
        """

    @abc.abstractmethod
    def unload(self, kernel: Kernel) -> None:
        """Releases a kernel's module."""

    @abc.abstractmethod
    def stage(self, data: bytes, stream: Stream, *, guest_offset: int = 0) -> DeviceBuffer:
        """Copies host bytes into a new device buffer, in the stream's order.

        `guest_offset` is where the bytes sit in the guest's memory: the buffer keeps its
        alignment modulo `DEVICE_ALIGNMENT_BYTES` (`lead_bytes`).

        Raises:
            AbiFailure: QUOTA_EXCEEDED when the device is out of memory.
        """

    @abc.abstractmethod
    def read(self, buffer: DeviceBuffer, stream: Stream) -> bytes:
        """Copies a buffer back to the host, after the stream's work on it.

        Raises:
            AbiFailure: the copy (or the stream's earlier work) failed.
        """

    @abc.abstractmethod
    def allocate(self, size_bytes: int, stream: Stream) -> DeviceBuffer:
        """A new device buffer of `size_bytes` zeros (a device-resident buffer), zeroed in
        the stream's order.

        Raises:
            AbiFailure: QUOTA_EXCEEDED when the device is out of memory.
        """

    @abc.abstractmethod
    def write(self, buffer: DeviceBuffer, offset_bytes: int, data: bytes, stream: Stream) -> None:
        """Copies host bytes into a buffer at `offset_bytes`, in the stream's order (the
        caller has checked the range)."""

    @abc.abstractmethod
    def read_range(
        self, buffer: DeviceBuffer, offset_bytes: int, length_bytes: int, stream: Stream
    ) -> bytes:
        """Copies bytes of a buffer back to the host, after the stream's work on it (the
        caller has checked the range)."""

    @abc.abstractmethod
    def free(self, buffer: DeviceBuffer, stream: Stream) -> None:
        """Releases a buffer, in the stream's order (after the work queued on it)."""

    @abc.abstractmethod
    def launch(
        self,
        stream: Stream,
        kernel: Kernel,
        *,
        grid: Dim3,
        block: Dim3,
        shared_mem_bytes: int,
        args: Sequence[LaunchArg],
    ) -> LaunchResult:
        """Runs one kernel on `stream`, or queues it there (then `finish` reports how it
        ended and its kernel time).

        Raises:
            AbiFailure: INVALID_ARGS (the arguments do not fit the kernel),
                LAUNCH_FAILED (the launch or the kernel failed), INVALID_DIMENSIONS.
        """

    def finish(self, stream: Stream, deadline: float | None) -> float:
        """Waits for the work queued on `stream`; returns the kernel seconds of the
        launches queued since the last `finish` (a backend that runs launches at once
        has none left: 0).

        Args:
            stream: The session's stream.
            deadline: `time.monotonic()` by which the work must be done (None: no bound).

        Raises:
            DeadlineExceeded: the work did not finish in time.
            AbiFailure: LAUNCH_FAILED: a queued launch (or copy) failed.
        """
        del stream, deadline
        return 0.0

    def healthy(self) -> bool:
        """False once the device context cannot run more work (a CUDA sticky error: an
        illegal address, a trap, a hung-kernel timeout); its worker process then ends."""
        return True

    def close(self) -> None:  # noqa: B027 - most backends hold nothing process-wide
        """Releases the device (at shutdown)."""
