"""The backend interface: what the dispatcher needs from a device to run a batch.

A backend loads kernels, stages host bytes into device buffers, launches kernels on a
session's stream and copies buffers back. Failures are `AbiFailure`s carrying the guest
ABI code (the dispatcher reports them per command); anything else is a bug (-7).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field

from tensorwasm_common.gpu_abi import Dim3, ScalarArg

from tensorwasm_dispatcher.backends.discovery import BackendKind


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
    """A loaded kernel (a module's entry point), owned by one session."""

    entry: str


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
    def stage(self, data: bytes) -> DeviceBuffer:
        """Copies host bytes into a new device buffer.

        Raises:
            AbiFailure: QUOTA_EXCEEDED when the device is out of memory.
        """

    @abc.abstractmethod
    def read(self, buffer: DeviceBuffer, stream: Stream) -> bytes:
        """Copies a buffer back to the host, after the stream's work on it."""

    @abc.abstractmethod
    def allocate(self, size_bytes: int) -> DeviceBuffer:
        """A new device buffer of `size_bytes` zeros (a device-resident buffer).

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
    def free(self, buffer: DeviceBuffer) -> None:
        """Releases a staged buffer."""

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
        deadline: float | None = None,
    ) -> LaunchResult:
        """Runs one kernel to completion on `stream`; a backend that can stop a kernel stops
        it at `deadline` (on `time.monotonic()`; None: its own limit only).

        Raises:
            AbiFailure: INVALID_ARGS (the arguments do not fit the kernel),
                LAUNCH_FAILED (the launch or the kernel failed), INVALID_DIMENSIONS.
        """

    def close(self) -> None:  # noqa: B027 - most backends hold nothing process-wide
        """Releases the device (at shutdown)."""
