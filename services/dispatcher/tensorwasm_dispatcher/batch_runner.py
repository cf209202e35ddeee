"""Runs one batch of a guest session's commands on the backend, with per-tenant accounting.

Each command gets its own ABI status; a failed command does not stop the others (a launch
on a kernel that failed to load fails on its own, with invalid_kernel). Buffers are staged
when a launch first needs them, against the tenant's quota, shared by the batch's later
launches, copied back once the batch ran (when asked for and possibly written), and
released at the end of the request. A loaded kernel's module memory counts against the
same quota until the session ends.

Launches are queued on the session's stream and waited for once, when the batch ends or a
buffer command needs the stream's results (`Backend.finish`, bounded by the call's
deadline): a failure found then is the result of every launch queued since the last wait,
and nothing is copied back. A wait that outlives the deadline ends the session.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from tensorwasm_common.digests import blake3_hex
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
    Command,
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
from tensorwasm_dispatcher.backends.base import DeadlineExceeded, charged_bytes, lead_bytes
from tensorwasm_dispatcher.device_buffers import DeviceBuffers
from tensorwasm_dispatcher.errors import InvalidBatchError
from tensorwasm_dispatcher.gpu_sessions import GpuSession, GpuSessionTable

_log = logging.getLogger(__name__)

MAX_COMMANDS_PER_BATCH = 4096


_BUFFER_COMMANDS = (AllocBuffer, FreeBuffer, WriteBuffer, ReadBuffer)
# The commands that queue work on the session's stream (their failure may show later).
_QUEUED_COMMANDS = (LaunchKernel, WriteBuffer, AllocBuffer)
OK = CommandResult(0)
_NOT_RUN = "not run: an earlier launch outlived the call's deadline and the session was ended"


class _Staging:
    """The device buffers of one request, staged on first use against the tenant's quota."""

    def __init__(
        self,
        backend: Backend,
        ledger: Ledger,
        tenant: str,
        regions: Sequence[StagedRegion],
        stream: Stream,
    ) -> None:
        self._backend = backend
        self._ledger = ledger
        self._tenant = tenant
        self._stream = stream
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
        size = charged_bytes(lead_bytes(region.guest_offset) + len(region.data))
        if not self._ledger.reserve(self._tenant, size):
            usage = self._ledger.usage(self._tenant)
            raise AbiFailure(
                AbiError.QUOTA_EXCEEDED,
                f"staging {len(region.data)} bytes ({size} allocated) would exceed the "
                f"tenant's GPU memory quota of "
                f"{self._ledger.memory_quota_bytes} bytes ({usage.staged_bytes_current} staged)",
            )
        try:
            buffer = self._backend.stage(
                region.data, self._stream, guest_offset=region.guest_offset
            )
        except BaseException:
            self._ledger.release(self._tenant, size)
            raise
        self._staged[region.buffer_id] = buffer
        self.staged_bytes += size
        return buffer

    def mark_written(self, buffer_id: int) -> None:
        self._written.add(buffer_id)

    def copy_back(self) -> dict[int, bytes]:
        """The bytes of the buffers asked back that a launch may have written.

        Raises:
            AbiFailure: a copy failed (a device error): nothing is copied back.
        """
        return {
            buffer_id: self._backend.read(self._staged[buffer_id], self._stream)
            for buffer_id in sorted(self._written)
            if self.regions[buffer_id].copy_back
        }

    def release(self) -> None:
        for buffer in self._staged.values():
            try:
                self._backend.free(buffer, self._stream)
            except Exception:
                _log.exception("freeing a staged buffer failed", extra={"tenant": self._tenant})
        self._staged.clear()
        if self.staged_bytes:
            self._ledger.release(self._tenant, self.staged_bytes)
            self.staged_bytes = 0


class _Run:
    """One batch in its session: the per-command results, the work queued on the stream
    since it was last waited for, the kernel time and the copy-back."""

    def __init__(
        self, dispatcher: Dispatcher, session: GpuSession, batch: Batch, deadline: float | None
    ) -> None:
        self._dispatcher = dispatcher
        self._session = session
        self._batch = batch
        self._deadline = deadline
        backend, ledger = dispatcher.backend, dispatcher.ledger
        self.staging = _Staging(backend, ledger, session.tenant, batch.regions, session.stream)
        self.results: list[CommandResult] = []
        self.kernel_seconds = 0.0
        self.buffers: dict[int, bytes] = {}
        self.timed_out = False
        # Positions of the commands whose work is queued on the stream, not yet waited for.
        self._queued: list[int] = []

    def all(self) -> None:
        """Runs every command, waits for the stream, then copies the written buffers back."""
        for command in self._batch.commands:
            if isinstance(command, ReadBuffer) and self._queued and not self.timed_out:
                self._wait()  # a failure belongs to the work queued before the read
            if self.timed_out:  # the stream may never finish: nothing more goes to it
                self.results.append(CommandResult(int(AbiError.LAUNCH_FAILED), _NOT_RUN))
                continue
            self.results.append(self._one(command))
            if self.results[-1].code == 0 and isinstance(command, _QUEUED_COMMANDS):
                self._queued.append(len(self.results) - 1)
        if not self._wait() or self.timed_out:
            return
        try:
            self.buffers = self.staging.copy_back()
        except AbiFailure as failure:
            message = f"copying the results back failed: {failure.message}"
            launches = [
                position
                for position, command in enumerate(self._batch.commands)
                if isinstance(command, LaunchKernel)
            ]
            self._fail(launches, CommandResult(int(failure.code), message))

    def _one(self, command: Command) -> CommandResult:
        session, dispatcher = self._session, self._dispatcher
        try:
            if isinstance(command, _BUFFER_COMMANDS):
                data = dispatcher.buffers.run(session, command)
                return CommandResult(0, data=data) if data else OK
            self.kernel_seconds += dispatcher.run_kernel_command(session, self.staging, command)
        except AbiFailure as failure:
            return CommandResult(int(failure.code), failure.message)
        except Exception:
            _log.exception("a GPU command failed unexpectedly", extra={"tenant": session.tenant})
            return CommandResult(int(AbiError.INTERNAL), "internal error")
        return OK

    def _wait(self) -> bool:
        """Waits for the queued work; a failure becomes its commands' result. True: done."""
        queued, self._queued = self._queued, []
        try:
            self.kernel_seconds += self._dispatcher.backend.finish(
                self._session.stream, self._deadline
            )
        except AbiFailure as failure:
            self.timed_out = isinstance(failure, DeadlineExceeded)
            self._fail(queued, CommandResult(int(failure.code), failure.message))
            return False
        return True

    def _fail(self, positions: Iterable[int], result: CommandResult) -> None:
        for position in positions:
            if self.results[position].code == 0 and isinstance(
                self._batch.commands[position], _QUEUED_COMMANDS
            ):
                self.results[position] = result


class Dispatcher:
    """Executes batches for tenants: sessions, staging, launches and their accounting."""

    def __init__(self, backend: Backend, ledger: Ledger, sessions: GpuSessionTable) -> None:
        self.backend = backend
        self.ledger = ledger
        self.sessions = sessions
        self.buffers = DeviceBuffers(backend, ledger)
        sessions.on_close = self.release_session

    def execute(self, tenant: str, batch: Batch, deadline: float | None = None) -> BatchResult:
        """Runs `batch` for `tenant` (blocking: call it off the event loop).

        Args:
            tenant: Whose batch it is.
            batch: The commands.
            deadline: `time.monotonic()` by which the call must be done (None: unbounded):
                launches still running then fail and the session is ended (in a worker
                process of `workers`, the pool stops the whole worker at the deadline).

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
        if len({region.buffer_id for region in batch.regions}) != len(batch.regions):
            raise InvalidBatchError("two staged buffers have the same buffer_id")
        try:
            session = self.sessions.checkout(tenant, batch.session_id)
        except AbiFailure as refused:  # the tenant's session cap: every command fails
            failed = CommandResult(int(refused.code), refused.message)
            return self._account(tenant, batch, [failed] * len(batch.commands), 0.0, {})
        run = _Run(self, session, batch, deadline)
        try:
            run.all()
        finally:
            run.staging.release()
            self.sessions.checkin(session, end=batch.end_session or run.timed_out)
        return self._account(tenant, batch, run.results, run.kernel_seconds, run.buffers)

    def _account(
        self,
        tenant: str,
        batch: Batch,
        results: list[CommandResult],
        kernel_seconds: float,
        buffers: dict[int, bytes],
    ) -> BatchResult:
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

    def release_session(self, session: GpuSession) -> None:
        """Frees what a closing session holds: its device buffers and its kernels' charges."""
        self.buffers.release_all(session)
        module_bytes = sum(kernel.device_bytes for kernel in session.kernels.values())
        if module_bytes:
            self.ledger.release(session.tenant, module_bytes)

    def run_kernel_command(
        self, session: GpuSession, staging: _Staging, command: LoadKernel | LaunchKernel[KernelArg]
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
        if command.expected_digest and blake3_hex(command.ptx) != command.expected_digest:
            raise AbiFailure(
                AbiError.MALFORMED_PTX,
                f"the PTX does not match its registered digest {command.expected_digest[:16]}…",
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
        kernel = self.backend.load(command.ptx, entry)
        if kernel.device_bytes and not self.ledger.reserve(session.tenant, kernel.device_bytes):
            self.backend.unload(kernel)
            raise AbiFailure(
                AbiError.QUOTA_EXCEEDED,
                f"the module holds {kernel.device_bytes} bytes of device memory (code, "
                f"globals, constants), more than the tenant's GPU memory quota of "
                f"{self.ledger.memory_quota_bytes} bytes allows",
            )
        session.kernels[command.kernel_id] = kernel


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
