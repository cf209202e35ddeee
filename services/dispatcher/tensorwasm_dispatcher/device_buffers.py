"""Device-resident buffers of a session (the `tensorwasm:gpu` extension).

A buffer lives in its session from `AllocBuffer` until `FreeBuffer` or the session's end,
whichever comes first; its bytes, rounded up to the device's allocation granularity, count
against the tenant's GPU memory quota for all that time (with the staged bytes of
requests in flight). Handles are the executor's, scoped to the session, so one guest
instance can never name another's buffer. A launch argument's offset into a buffer is a
multiple of `OFFSET_ALIGNMENT_BYTES`: the dispatcher cannot see a kernel's element types,
and a misaligned access faults the device (a sticky error, on a GPU).
"""

from __future__ import annotations

import logging

from tensorwasm_common.gpu_abi import MAX_DEVICE_BUFFERS_PER_INSTANCE, AbiError, AbiFailure
from tensorwasm_common.gpu_batch import (
    AllocBuffer,
    BufferCommand,
    DeviceBufferRef,
    FreeBuffer,
    WriteBuffer,
)

from tensorwasm_dispatcher.accounting import Ledger
from tensorwasm_dispatcher.backends import Backend, BufferArg, DeviceBuffer
from tensorwasm_dispatcher.backends.base import charged_bytes
from tensorwasm_dispatcher.gpu_sessions import GpuSession

_log = logging.getLogger(__name__)

# The alignment of a buffer argument's offset: 4-byte elements (f32, i32, u32, f16 pairs).
OFFSET_ALIGNMENT_BYTES = 4


class DeviceBuffers:
    """Runs buffer commands for a tenant's sessions, keeping the ledger in step."""

    def __init__(self, backend: Backend, ledger: Ledger) -> None:
        self._backend = backend
        self._ledger = ledger

    def run(self, session: GpuSession, command: BufferCommand) -> bytes:
        """Runs one buffer command; returns the bytes a read read (else b"").

        Raises:
            AbiFailure: INVALID_ARGS (unknown handle, bad size), INVALID_POINTER (a range
                outside the buffer), QUOTA_EXCEEDED (the quota or the device is full).
        """
        if isinstance(command, AllocBuffer):
            self._allocate(session, command.handle, command.size_bytes)
            return b""
        buffer = self._find(session, command.handle)
        if isinstance(command, FreeBuffer):
            del session.buffers[command.handle]
            self._release(session, buffer)
            return b""
        if isinstance(command, WriteBuffer):
            _check_range(command.handle, buffer, command.offset_bytes, len(command.data))
            self._backend.write(buffer, command.offset_bytes, command.data, session.stream)
            return b""
        _check_range(command.handle, buffer, command.offset_bytes, command.length_bytes)
        return self._backend.read_range(
            buffer, command.offset_bytes, command.length_bytes, session.stream
        )

    def resolve(self, session: GpuSession, ref: DeviceBufferRef) -> BufferArg:
        """The launch argument for `ref`: the buffer from its offset to its end."""
        buffer = self._find(session, ref.handle)
        if ref.offset_bytes >= buffer.size_bytes:
            raise AbiFailure(
                AbiError.INVALID_POINTER,
                f"offset {ref.offset_bytes} is outside device buffer {ref.handle} "
                f"({buffer.size_bytes} bytes)",
            )
        if ref.offset_bytes % OFFSET_ALIGNMENT_BYTES:
            raise AbiFailure(
                AbiError.INVALID_POINTER,
                f"offset {ref.offset_bytes} into device buffer {ref.handle} is not a multiple "
                f"of {OFFSET_ALIGNMENT_BYTES}",
            )
        # The buffer's base is aligned for any type: the offset is what the kernel sees.
        length = buffer.size_bytes - ref.offset_bytes
        return BufferArg(buffer, ref.offset_bytes, length, guest_offset=ref.offset_bytes)

    def release_all(self, session: GpuSession) -> None:
        """Frees every buffer of a session that is closing."""
        buffers, session.buffers = list(session.buffers.values()), {}
        for buffer in buffers:
            self._release(session, buffer)

    def _allocate(self, session: GpuSession, handle: int, size_bytes: int) -> None:
        if size_bytes < 1:
            raise AbiFailure(AbiError.INVALID_ARGS, "a device buffer needs at least 1 byte")
        if handle in session.buffers:
            raise AbiFailure(AbiError.INVALID_ARGS, f"device buffer {handle} already exists")
        if len(session.buffers) >= MAX_DEVICE_BUFFERS_PER_INSTANCE:
            raise AbiFailure(
                AbiError.QUOTA_EXCEEDED,
                f"the session holds {MAX_DEVICE_BUFFERS_PER_INSTANCE} device buffers already",
            )
        tenant = session.tenant
        if not self._ledger.reserve(tenant, charged_bytes(size_bytes)):
            usage = self._ledger.usage(tenant)
            raise AbiFailure(
                AbiError.QUOTA_EXCEEDED,
                f"a device buffer of {size_bytes} bytes ({charged_bytes(size_bytes)} allocated) "
                f"would exceed the tenant's GPU memory "
                f"quota of {self._ledger.memory_quota_bytes} bytes "
                f"({usage.staged_bytes_current} held)",
            )
        try:
            buffer = self._backend.allocate(size_bytes, session.stream)
        except BaseException:
            self._ledger.release(tenant, charged_bytes(size_bytes))
            raise
        session.buffers[handle] = buffer
        self._ledger.record(tenant, device_buffers=1, device_buffer_bytes=size_bytes)

    def _release(self, session: GpuSession, buffer: DeviceBuffer) -> None:
        tenant = session.tenant
        try:
            self._backend.free(buffer, session.stream)
        except Exception:
            _log.exception("freeing a device buffer failed", extra={"tenant": tenant})
        self._ledger.release(tenant, charged_bytes(buffer.size_bytes))
        self._ledger.record(tenant, device_buffers=-1, device_buffer_bytes=-buffer.size_bytes)

    @staticmethod
    def _find(session: GpuSession, handle: int) -> DeviceBuffer:
        buffer = session.buffers.get(handle)
        if buffer is None:
            raise AbiFailure(AbiError.INVALID_ARGS, f"this session holds no device buffer {handle}")
        return buffer


def _check_range(handle: int, buffer: DeviceBuffer, offset_bytes: int, length_bytes: int) -> None:
    if offset_bytes + length_bytes > buffer.size_bytes:
        raise AbiFailure(
            AbiError.INVALID_POINTER,
            f"bytes [{offset_bytes}, {offset_bytes + length_bytes}) are outside device buffer "
            f"{handle} ({buffer.size_bytes} bytes)",
        )
