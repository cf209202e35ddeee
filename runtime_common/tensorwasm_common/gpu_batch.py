"""A batch of one guest session's GPU commands: what the executor sends, what the dispatcher runs.

Both sides share these types and their names, the `ExecuteRequest` and `ExecuteResponse`
messages' own; each side translates them to and from the messages itself (the executor's
dispatcher client, the dispatcher's servicer). A launch is generic in its arguments: the
executor queues launches whose pointers are still guest ranges and sends them with
`KernelArg`s only, which is all the dispatcher ever receives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from tensorwasm_common.gpu_abi import BufferRef, Dim3, ScalarArg


@dataclass(frozen=True)
class DeviceBufferRef:
    """A launch argument pointing into one of the session's device buffers, from
    `offset_bytes` to the buffer's end."""

    handle: int
    offset_bytes: int


# A launch argument as sent: a scalar, a range of a staged region, or a device buffer.
KernelArg = ScalarArg | BufferRef | DeviceBufferRef
ArgT = TypeVar("ArgT")


@dataclass(frozen=True)
class StagedRegion:
    """Host bytes of linear memory from `guest_offset`, staged for the batch's pointer
    arguments (`StagedBuffer` on the wire); with `copy_back`, its bytes come back once the
    batch ran if a launch may have written them."""

    buffer_id: int
    data: bytes = field(repr=False)
    guest_offset: int
    copy_back: bool


@dataclass(frozen=True)
class LoadKernel:
    """Load PTX and make its `entry` the session's kernel `kernel_id`."""

    kernel_id: int
    ptx: bytes = field(repr=False)
    entry: str
    # When set, BLAKE3 of `ptx` (hex): PTX with another digest is refused, not loaded.
    expected_digest: str = ""


@dataclass(frozen=True)
class LaunchKernel(Generic[ArgT]):
    """Launch the session's kernel `kernel_id` with `args` (`KernelArg`s when sent)."""

    kernel_id: int
    grid: Dim3
    block: Dim3
    shared_mem_bytes: int
    args: tuple[ArgT, ...]


@dataclass(frozen=True)
class AllocBuffer:
    """Allocate a zeroed device-resident buffer as the session's `handle` (extension)."""

    handle: int
    size_bytes: int


@dataclass(frozen=True)
class FreeBuffer:
    """Free the session's device buffer `handle` (extension)."""

    handle: int


@dataclass(frozen=True)
class WriteBuffer:
    """Copy host bytes into device buffer `handle` at `offset_bytes` (extension)."""

    handle: int
    offset_bytes: int
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class ReadBuffer:
    """Copy `length_bytes` of device buffer `handle` from `offset_bytes` back to the host;
    they come in the command's result `data` (extension)."""

    handle: int
    offset_bytes: int
    length_bytes: int


BufferCommand = AllocBuffer | FreeBuffer | WriteBuffer | ReadBuffer
Command = LoadKernel | LaunchKernel[KernelArg] | BufferCommand


@dataclass(frozen=True)
class Batch:
    """One Execute request: a session's commands, the regions they use, and whether it
    is the session's last."""

    session_id: str
    regions: tuple[StagedRegion, ...]
    commands: tuple[Command, ...]
    end_session: bool = False


@dataclass(frozen=True)
class CommandResult:
    """A command's ABI code (0: success), message, and the bytes a buffer read read."""

    code: int
    message: str = ""
    data: bytes = field(default=b"", repr=False)


@dataclass(frozen=True)
class BatchResult:
    """One result per command, the copied-back regions by buffer id, the batch's kernel
    time and the tenant's kernel time in all (this batch included)."""

    results: tuple[CommandResult, ...]
    buffers: Mapping[int, bytes]
    kernel_seconds: float = 0.0
    tenant_kernel_seconds: float = 0.0
