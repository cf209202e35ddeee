"""Runs one batch of a guest session's commands on the backend, with per-tenant accounting.

Each command gets its own ABI status; a failed command does not stop the others (a launch
on a kernel that failed to load fails on its own, with invalid_kernel). Buffers are staged
when a launch first needs them, against the tenant's quota, shared by the batch's later
launches, copied back once the batch ran (when asked for and possibly written), and
released at the end of the request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tensorwasm_common.gpu_abi import (
    MAX_BLOCK_DIM,
    MAX_BLOCK_THREADS,
    MAX_ENTRY_BYTES,
    MAX_GRID_DIM,
    MAX_KERNELS_PER_INSTANCE,
    MAX_PTX_BYTES,
    AbiError,
    AbiFailure,
    BufferRef,
    Dim3,
    ptx_declares_entry,
)
from tensorwasm_common.gpu_batch import (
    AllocBuffer,
    Batch,
    BatchResult,
    CommandResult,
    DeviceBufferRef,
    FreeBuffer,
    KernelArg,
    LaunchKernel,
    LoadKernel,
    ReadBuffer,
    StagedRegion,
    WriteBuffer,
)

from tensorwasm_dispatcher.accounting import Ledger
from tensorwasm_dispatcher.backends import Backend, BufferArg, DeviceBuffer, LaunchArg, Stream
from tensorwasm_dispatcher.device_buffers import DeviceBuffers
from tensorwasm_dispatcher.errors import InvalidBatchError
from tensorwasm_dispatcher.gpu_sessions import GpuSession, GpuSessionTable

_log = logging.getLogger(__name__)

MAX_COMMANDS_PER_BATCH = 4096


_BUFFER_COMMANDS = (AllocBuffer, FreeBuffer, WriteBuffer, ReadBuffer)
OK = CommandResult(0)


class _Staging:
    """The device buffers of one request, staged on first use against the tenant's quota."""

    def __init__(
        self, backend: Backend, ledger: Ledger, tenant: str, regions: Sequence[StagedRegion]
    ) -> None:
        self._backend = backend
        self._ledger = ledger
        self._tenant = tenant
        self.regions = {region.buffer_id: region for region in regions}
        if len(self.regions) != len(regions):
            raise InvalidBatchError("two staged buffers have the same buffer_id")
        self._staged: dict[int, DeviceBuffer] = {}
        self._written: set[int] = set()
        self.staged_bytes = 0

    def resolve(self, ref: BufferRef) -> BufferArg:
        region = self.regions.get(ref.buffer_id)
        if region is None:
            raise AbiFailure(AbiError.INVALID_POINTER, f"no staged buffer {ref.buffer_id}")
        if ref.offset_bytes + ref.length_bytes > len(region.data):
            raise AbiFailure(
                AbiError.INVALID_POINTER,
                f"bytes [{ref.offset_bytes}, {ref.offset_bytes + ref.length_bytes}) are outside "
                f"staged buffer {ref.buffer_id} ({len(region.data)} bytes)",
            )
        buffer = self._staged.get(ref.buffer_id)
        if buffer is None:
            buffer = self._stage(region)
        return BufferArg(
            buffer, ref.offset_bytes, ref.length_bytes, region.guest_offset + ref.offset_bytes
        )

    def _stage(self, region: StagedRegion) -> DeviceBuffer:
        size = len(region.data)
        if not self._ledger.reserve(self._tenant, size):
            usage = self._ledger.usage(self._tenant)
            raise AbiFailure(
                AbiError.QUOTA_EXCEEDED,
                f"staging {size} bytes would exceed the tenant's GPU memory quota of "
                f"{self._ledger.memory_quota_bytes} bytes ({usage.staged_bytes_current} staged)",
            )
        try:
            buffer = self._backend.stage(region.data)
        except BaseException:
            self._ledger.release(self._tenant, size)
            raise
        self._staged[region.buffer_id] = buffer
        self.staged_bytes += size
        return buffer

    def mark_written(self, buffer_id: int) -> None:
        self._written.add(buffer_id)

    def copy_back(self, stream: Stream) -> dict[int, bytes]:
        """The bytes of the buffers asked back that a launch may have written."""
        return {
            buffer_id: self._backend.read(self._staged[buffer_id], stream)
            for buffer_id in sorted(self._written)
            if self.regions[buffer_id].copy_back
        }

    def release(self) -> None:
        for buffer in self._staged.values():
            try:
                self._backend.free(buffer)
            except Exception:
                _log.exception("freeing a staged buffer failed", extra={"tenant": self._tenant})
        self._staged.clear()
        if self.staged_bytes:
            self._ledger.release(self._tenant, self.staged_bytes)
            self.staged_bytes = 0


class Dispatcher:
    """Executes batches for tenants: sessions, staging, launches and their accounting."""

    def __init__(self, backend: Backend, ledger: Ledger, sessions: GpuSessionTable) -> None:
        self.backend = backend
        self.ledger = ledger
        self.sessions = sessions
        self.buffers = DeviceBuffers(backend, ledger)
        sessions.on_close = self.buffers.release_all

    def execute(self, tenant: str, batch: Batch, *, deadline: float | None = None) -> BatchResult:
        """Runs `batch` for `tenant` (blocking: call it off the event loop); a launch still
        running at `deadline` (on `time.monotonic()`) is stopped where the backend can.

        Raises:
            InvalidBatchError: no session id, too many commands, duplicate buffer ids.
        """
        if not batch.session_id:
            raise InvalidBatchError("session_id is required", metadata={"field": "session_id"})
        if len(batch.commands) > MAX_COMMANDS_PER_BATCH:
            raise InvalidBatchError(
                f"{len(batch.commands)} commands, more than {MAX_COMMANDS_PER_BATCH} per batch",
                metadata={"field": "commands"},
            )
        staging = _Staging(self.backend, self.ledger, tenant, batch.regions)
        session = self.sessions.checkout(tenant, batch.session_id)
        results: list[CommandResult] = []
        kernel_seconds = 0.0
        try:
            for command in batch.commands:
                try:
                    if isinstance(command, _BUFFER_COMMANDS):
                        data = self.buffers.run(session, command)
                        results.append(CommandResult(0, data=data) if data else OK)
                        continue
                    kernel_seconds += self._run(session, staging, command, deadline)
                    results.append(OK)
                except AbiFailure as failure:
                    results.append(CommandResult(int(failure.code), failure.message))
                except Exception:
                    _log.exception("a GPU command failed unexpectedly", extra={"tenant": tenant})
                    results.append(CommandResult(int(AbiError.INTERNAL), "internal error"))
            buffers = staging.copy_back(session.stream)
        finally:
            staging.release()
            self.sessions.checkin(session, end=batch.end_session)
        launches = sum(
            1
            for command, result in zip(batch.commands, results, strict=True)
            if isinstance(command, LaunchKernel) and result.code == 0
        )
        loads = sum(
            1
            for command, result in zip(batch.commands, results, strict=True)
            if isinstance(command, LoadKernel) and result.code == 0
        )
        usage = self.ledger.record(
            tenant,
            launches=launches,
            loads=loads,
            failed_commands=sum(1 for result in results if result.code != 0),
            kernel_seconds=kernel_seconds,
            execute_requests=1,
        )
        return BatchResult(tuple(results), buffers, kernel_seconds, usage.kernel_seconds)

    def _run(
        self,
        session: GpuSession,
        staging: _Staging,
        command: LoadKernel | LaunchKernel[KernelArg],
        deadline: float | None,
    ) -> float:
        """Runs one command; returns its kernel time. Failures raise AbiFailure."""
        if isinstance(command, LoadKernel):
            self._load(session, command)
            return 0.0
        kernel = session.kernels.get(command.kernel_id)
        if kernel is None:
            raise AbiFailure(
                AbiError.INVALID_KERNEL, f"kernel {command.kernel_id} is not loaded in this session"
            )
        _check_dimensions(command.grid, command.block)
        args: list[LaunchArg] = [
            staging.resolve(arg)
            if isinstance(arg, BufferRef)
            else self.buffers.resolve(session, arg)
            if isinstance(arg, DeviceBufferRef)
            else arg
            for arg in command.args
        ]
        result = self.backend.launch(
            session.stream,
            kernel,
            grid=command.grid,
            block=command.block,
            shared_mem_bytes=command.shared_mem_bytes,
            args=args,
            deadline=deadline,
        )
        for position in result.written:
            arg = command.args[position]
            if isinstance(arg, BufferRef):
                staging.mark_written(arg.buffer_id)
        return result.kernel_seconds

    def _load(self, session: GpuSession, command: LoadKernel) -> None:
        entry = command.entry
        if not entry or len(entry.encode("utf-8")) > MAX_ENTRY_BYTES:
            raise AbiFailure(
                AbiError.INVALID_ARGS, f"the entry name must be 1 to {MAX_ENTRY_BYTES} bytes"
            )
        if len(command.ptx) > MAX_PTX_BYTES:
            raise AbiFailure(
                AbiError.MALFORMED_PTX,
                f"the PTX has {len(command.ptx)} bytes, more than {MAX_PTX_BYTES}",
            )
        if not ptx_declares_entry(command.ptx, entry):
            raise AbiFailure(AbiError.MALFORMED_PTX, f"the PTX declares no `.entry {entry}`")
        if command.kernel_id in session.kernels:
            raise AbiFailure(
                AbiError.INVALID_KERNEL, f"kernel id {command.kernel_id} is already loaded"
            )
        if len(session.kernels) >= MAX_KERNELS_PER_INSTANCE:
            raise AbiFailure(
                AbiError.QUOTA_EXCEEDED,
                f"the session has {MAX_KERNELS_PER_INSTANCE} kernels loaded already",
            )
        session.kernels[command.kernel_id] = self.backend.load(command.ptx, entry)


def _check_dimensions(grid: Dim3, block: Dim3) -> None:
    """The ABI's dimension limits (the backend checks the device's own)."""
    if not all(1 <= size <= MAX_BLOCK_DIM for size in block) or (
        block[0] * block[1] * block[2] > MAX_BLOCK_THREADS
    ):
        raise AbiFailure(
            AbiError.INVALID_DIMENSIONS,
            f"block {block}: each dimension must be in [1, {MAX_BLOCK_DIM}] and the "
            f"product at most {MAX_BLOCK_THREADS}",
        )
    if not all(1 <= size <= MAX_GRID_DIM for size in grid):
        raise AbiFailure(
            AbiError.INVALID_DIMENSIONS,
            f"grid {grid}: each dimension must be in [1, {MAX_GRID_DIM}]",
        )
