"""The `wasi:cuda` state of one guest store: its kernels, its queued launches, `last_error`.

A session belongs to one store (a single invocation, or a live instance for its whole
life) and runs on that store's thread. Every guest input is validated before anything is
queued. Launches are queued and flushed as one batch: at `sync`, when the batch is full
(commands or staged bytes), at a `load_ptx` (whose result the guest needs at once), and at
the end of the guest call. Written buffers are copied back into linear memory when their
batch returns; errors of queued commands surface at the next `sync`, the first one's code
returned and its message in `last_error`.

Sending (the deadline, retries while the dispatcher is busy) and ending the dispatcher's
session are `cuda_sender.BatchSender`'s: an empty end-of-session request goes in the
transport's background where it can; a final batch that still carries commands is sent
and waited for (its work belongs to the call).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from tensorwasm_common.gpu_abi import (
    MAX_ENTRY_BYTES,
    MAX_KERNELS_PER_INSTANCE,
    MAX_PTX_BYTES,
    MAX_TOTAL_PTX_BYTES,
    AbiError,
    AbiFailure,
    ptx_declares_entry,
)
from tensorwasm_common.gpu_batch import (
    AllocBuffer,
    Batch,
    BatchResult,
    BufferCommand,
    CommandResult,
    LaunchKernel,
    LoadKernel,
    ReadBuffer,
    WriteBuffer,
)

from tensorwasm_executor.gpu.abi import (
    ArgRecord,
    as_u32,
    check_dimensions,
    check_region,
    truncate_error,
)
from tensorwasm_executor.gpu.argv import ArgvCache, require_memory
from tensorwasm_executor.gpu.batch import (
    GuestMemory,
    QueuedCommand,
    Transport,
    build_request,
    staged_bytes,
)
from tensorwasm_executor.gpu.device_state import DeviceState
from tensorwasm_executor.gpu.sender import BatchSender
from tensorwasm_executor.metrics import KERNEL_DISPATCHES

_log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_COMMANDS = 256
DEFAULT_MAX_BATCH_BYTES = 64 << 20


class CudaSession:
    """One store's `wasi:cuda` state; its methods are the ABI functions (codes, not raises)."""

    def __init__(
        self,
        transport: Transport,
        *,
        max_batch_commands: int = DEFAULT_MAX_BATCH_COMMANDS,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_batch_commands < 1 or max_batch_bytes < 1:
            raise ValueError("max_batch_commands and max_batch_bytes must be positive")
        self._sender = BatchSender(transport, clock=clock, sleep=sleep)
        self.session_id = self._sender.session_id
        self._max_commands = max_batch_commands
        self._max_bytes = max_batch_bytes
        self._kernels: dict[int, str] = {}  # id -> entry
        self._kernel_sources: dict[int, bytes] = {}  # id -> PTX, for snapshots
        self._next_kernel_id = 0
        self._ptx_bytes = 0
        self._pending: list[QueuedCommand] = []
        self._pending_bytes = 0
        self._deferred: AbiFailure | None = None
        self._deferred_more = 0
        self._last_error = b""
        self._argv = ArgvCache()
        # Extension state (`tensorwasm:gpu`, see gpu_ext.py): device buffers by handle
        # (their sizes), and kernel time as the dispatcher reported it.
        self.device_buffers: dict[int, int] = {}
        self.device_handles_issued = 0
        self.kernel_seconds = 0.0
        self.tenant_kernel_seconds = 0.0

    @property
    def holds_device_state(self) -> bool:
        """Whether the session has kernels loaded or device buffers allocated (state that
        lives on the dispatcher, outside the instance)."""
        return bool(self._kernels or self.device_buffers)

    def export_device_state(self, deadline: float) -> DeviceState:
        """The session's kernels and its buffers' bytes, read back from the device (one
        round trip), between calls.

        Raises:
            AbiFailure: the dispatcher could not read a buffer.
        """
        self._sender.deadline = deadline
        buffers = []
        for handle, size in sorted(self.device_buffers.items()):
            result = self.request(None, ReadBuffer(handle, 0, size))
            if result.code != 0:
                raise AbiFailure(_abi_code(result.code), result.message)
            if len(result.data) != size:
                raise AbiFailure(AbiError.INTERNAL, "the dispatcher read the wrong size")
            buffers.append((handle, result.data))
        kernels = tuple(
            (kernel_id, self._kernel_sources[kernel_id], entry)
            for kernel_id, entry in sorted(self._kernels.items())
        )
        return DeviceState(
            kernels, tuple(buffers), self._next_kernel_id, self.device_handles_issued
        )

    def import_device_state(self, state: DeviceState, deadline: float) -> None:
        """Loads the kernels and allocates and writes the buffers of `state` under their
        ids, in this (fresh) session.

        Raises:
            AbiFailure: the dispatcher refused a kernel or a buffer (quota, PTX).
        """
        self._sender.deadline = deadline
        for kernel_id, ptx, entry in state.kernels:
            self._check_load_quota(len(ptx))
            result = self.request(None, LoadKernel(kernel_id, ptx, entry))
            if result.code != 0:
                raise AbiFailure(_abi_code(result.code), result.message)
            self._kernels[kernel_id] = entry
            self._kernel_sources[kernel_id] = ptx
            self._ptx_bytes += len(ptx)
        for handle, data in state.buffers:
            result = self.request(None, AllocBuffer(handle, len(data)))
            if result.code != 0:
                raise AbiFailure(_abi_code(result.code), result.message)
            self.device_buffers[handle] = len(data)
            result = self.request(None, WriteBuffer(handle, 0, data))
            if result.code != 0:
                raise AbiFailure(_abi_code(result.code), result.message)
        self._next_kernel_id = max(self._next_kernel_id, state.next_kernel_id)
        self.device_handles_issued = max(self.device_handles_issued, state.handles_issued)

    @property
    def requests_sent(self) -> int:
        """Requests sent to the dispatcher so far (retries and the session's end included)."""
        return self._sender.requests_sent

    # --- the call's life -------------------------------------------------------------

    def begin_call(self, deadline: float) -> None:
        """A guest call starts; `deadline` (on the session's clock) bounds its requests."""
        self._sender.deadline = deadline

    def end_call(self, memory: GuestMemory | None, *, completed: bool, final: bool) -> None:
        """The guest call returned (`completed`) or failed; flushes what it left queued.

        Args:
            memory: The store's memory (None when the guest never reached a host call).
            completed: False when it trapped, exited or was stopped: its queued launches
                are dropped.
            final: The store is about to be discarded: nothing is copied back, and the
                dispatcher's session ends with this request.
        """
        if not completed:
            self._pending.clear()
            self._pending_bytes = 0
        if not self._pending:
            if final:
                self._sender.end_session(self._sender.deadline)
            return
        try:
            self._flush(memory, copy_back=not final, end_session=final)
        except AbiFailure as failure:  # nobody is left to tell
            _log.info("the last GPU batch of a call failed: %s", failure.message)

    def close(self) -> None:
        """The store is closed: ends the dispatcher's session if one may be open."""
        self._pending.clear()
        self._pending_bytes = 0
        self._sender.end_session()

    # --- the ABI -----------------------------------------------------------------------

    def load_ptx(
        self, memory: GuestMemory | None, ptx_ptr: int, ptx_len: int, entry_ptr: int, entry_len: int
    ) -> int:
        """`wasi_cuda_load_ptx`: a kernel id (>= 0) or an ABI error code."""
        try:
            memory = require_memory(memory)
            size = memory.size()
            if as_u32(ptx_len) > MAX_PTX_BYTES:
                raise AbiFailure(
                    AbiError.QUOTA_EXCEEDED,
                    f"the PTX has {as_u32(ptx_len)} bytes, more than {MAX_PTX_BYTES} per load",
                )
            ptx_start, ptx_size = check_region(ptx_ptr, ptx_len, size, "the PTX")
            entry_start, entry_size = check_region(entry_ptr, entry_len, size, "the entry name")
            entry = _entry_name(memory.read(entry_start, entry_size))
            self._check_load_quota(ptx_size)
            ptx = memory.read(ptx_start, ptx_size)
        except AbiFailure as failure:
            return self._fail(failure)
        return self.load_kernel(memory, ptx, entry)

    def load_kernel(
        self, memory: GuestMemory | None, ptx: bytes, entry: str, expected_digest: str = ""
    ) -> int:
        """Loads PTX the host provides (a jit-emitted or registered kernel) as this store's
        next kernel.

        The same caps and checks as `load_ptx`; the id works with `wasi_cuda_launch`. With
        `expected_digest` (a registered kernel's BLAKE3, hex) the dispatcher verifies the
        PTX against it before loading.

        Returns:
            The kernel id (>= 0), or an ABI error code.
        """
        try:
            self._check_load_quota(len(ptx))
            if not ptx_declares_entry(ptx, entry):
                raise AbiFailure(AbiError.MALFORMED_PTX, f"the PTX declares no `.entry {entry}`")
            kernel_id = self._next_kernel_id
            result = self._flush(memory, extra=LoadKernel(kernel_id, ptx, entry, expected_digest))
            if result is not None and result.code != 0:
                raise AbiFailure(_abi_code(result.code), result.message)
        except AbiFailure as failure:
            return self._fail(failure)
        self._kernels[kernel_id] = entry
        self._kernel_sources[kernel_id] = ptx
        self._next_kernel_id += 1
        self._ptx_bytes += len(ptx)
        return kernel_id

    def _check_load_quota(self, ptx_size: int) -> None:
        if len(self._kernels) >= MAX_KERNELS_PER_INSTANCE:
            raise AbiFailure(
                AbiError.QUOTA_EXCEEDED,
                f"the instance has {MAX_KERNELS_PER_INSTANCE} kernels loaded already",
            )
        if self._ptx_bytes + ptx_size > MAX_TOTAL_PTX_BYTES:
            raise AbiFailure(
                AbiError.QUOTA_EXCEEDED,
                f"the instance would load more than {MAX_TOTAL_PTX_BYTES} bytes of PTX",
            )

    def launch(
        self,
        memory: GuestMemory | None,
        kernel_id: int,
        *,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        shared_mem: int,
        args_ptr: int,
        args_len: int,
    ) -> int:
        """`wasi_cuda_launch`: 0 once validated and queued, or an ABI error code."""
        try:
            self._check_launch(kernel_id, grid, block)
            records = self._argv.read(memory, args_ptr, args_len, self.device_buffers)
            self._enqueue(memory, LaunchKernel(kernel_id, grid, block, as_u32(shared_mem), records))
        except AbiFailure as failure:
            return self._fail(failure)
        return 0

    def launch_records(
        self,
        memory: GuestMemory | None,
        kernel_id: int,
        *,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        records: tuple[ArgRecord, ...],
    ) -> int:
        """Queues a launch whose arguments the host built (pointer records already
        bounds-checked); 0, or an ABI error code, as `launch`."""
        try:
            self._check_launch(kernel_id, grid, block)
            self._enqueue(memory, LaunchKernel(kernel_id, grid, block, 0, records))
        except AbiFailure as failure:
            return self._fail(failure)
        return 0

    def _check_launch(
        self, kernel_id: int, grid: tuple[int, int, int], block: tuple[int, int, int]
    ) -> None:
        if kernel_id not in self._kernels:
            raise AbiFailure(
                AbiError.INVALID_KERNEL, f"kernel {kernel_id} was not loaded by this instance"
            )
        check_dimensions(grid, block)

    def _enqueue(self, memory: GuestMemory | None, launch: LaunchKernel[ArgRecord]) -> None:
        launch_bytes = staged_bytes(launch)
        if launch_bytes > self._max_bytes:
            raise AbiFailure(
                AbiError.QUOTA_EXCEEDED,
                f"the launch stages {launch_bytes} bytes, more than {self._max_bytes} per batch",
            )
        if self._pending and self._pending_bytes + launch_bytes > self._max_bytes:
            self._flush(memory)  # full by bytes: send what is queued first
        self._pending.append(launch)
        self._pending_bytes += launch_bytes
        KERNEL_DISPATCHES.inc()
        if len(self._pending) >= self._max_commands:
            self._flush(memory)  # full by commands

    def sync(self, memory: GuestMemory | None) -> int:
        """`wasi_cuda_sync`: runs what is queued; 0, or the first failure since the last sync."""
        try:
            if self._pending:
                self._flush(memory)
        except AbiFailure as failure:
            return self._fail(failure)
        deferred, self._deferred = self._deferred, None
        more, self._deferred_more = self._deferred_more, 0
        if deferred is None:
            return 0
        if more:
            deferred = AbiFailure(deferred.code, f"{deferred.message} (and {more} more failed)")
        return self._fail(deferred)

    def last_error_len(self) -> int:
        """`wasi_cuda_last_error_len`: the byte length of the last error (0: none)."""
        return len(self._last_error)

    def last_error_copy(self, memory: GuestMemory | None, dst_ptr: int, dst_len: int) -> int:
        """`wasi_cuda_last_error_copy`: bytes written (min of both lengths), 0, or -2."""
        if as_u32(dst_len) == 0:
            return 0
        try:
            memory = require_memory(memory)
            start, size = check_region(dst_ptr, dst_len, memory.size(), "the destination")
        except AbiFailure as failure:
            return int(failure.code)  # last_error keeps the error the guest is reading
        count = min(size, len(self._last_error))
        if count:
            memory.write(start, self._last_error[:count])
        return count

    def remaining_seconds(self) -> float:
        """Time left before the current call's deadline (0 when it has passed)."""
        return self._sender.remaining_seconds()

    # --- for extension modules (gpu_ext.py and others) -----------------------------------

    def request(
        self, memory: GuestMemory | None, command: LoadKernel | BufferCommand
    ) -> CommandResult:
        """Sends what is queued and then `command`, and returns `command`'s result (a
        round trip: for functions whose result the guest needs at once)."""
        result = self._flush(memory, extra=command)
        assert result is not None
        return result

    def enqueue(self, memory: GuestMemory | None, command: QueuedCommand) -> None:
        """Queues a command whose failure the next sync reports (sends a full batch).

        Raises:
            AbiFailure: QUOTA_EXCEEDED when the command alone is larger than a batch.
        """
        size = staged_bytes(command)
        if size > self._max_bytes:
            raise AbiFailure(
                AbiError.QUOTA_EXCEEDED,
                f"the command carries {size} bytes, more than {self._max_bytes} per batch",
            )
        if self._pending and self._pending_bytes + size > self._max_bytes:
            self._flush(memory)
        self._pending.append(command)
        self._pending_bytes += size
        if len(self._pending) >= self._max_commands:
            self._flush(memory)

    def flush(self, memory: GuestMemory | None, *, even_if_empty: bool) -> None:
        """Runs what is queued now (its failures wait for the next sync); with
        `even_if_empty`, sends a request even when nothing is queued."""
        if self._pending or even_if_empty:
            self._flush(memory)

    def fail(self, failure: AbiFailure) -> int:
        """Records `failure` in last_error; returns its code."""
        return self._fail(failure)

    def fail_internal(self, function: str) -> int:
        """Records an unexpected failure of a host function; returns internal (-7)."""
        return self._fail(AbiFailure(AbiError.INTERNAL, f"{function} failed unexpectedly"))

    # --- internals ---------------------------------------------------------------------

    def _fail(self, failure: AbiFailure) -> int:
        self._last_error = truncate_error(f"{failure.code.label}: {failure.message}")
        return int(failure.code)

    def _defer(self, failure: AbiFailure) -> None:
        """Keeps a queued command's failure for the next sync (the first one wins)."""
        if self._deferred is None:
            self._deferred = failure
            self._fail(failure)
        else:
            self._deferred_more += 1

    def _flush(
        self,
        memory: GuestMemory | None,
        *,
        extra: LoadKernel | BufferCommand | None = None,
        copy_back: bool = True,
        end_session: bool = False,
    ) -> CommandResult | None:
        """Sends the queued launches (and `extra`) as one request; copies back what comes
        back; defers the queued launches' failures. Returns `extra`'s result."""
        queued, self._pending, self._pending_bytes = self._pending, [], 0
        commands: list[QueuedCommand] = [*queued]
        if extra is not None:
            commands.append(extra)
        request = build_request(
            self.session_id, commands, memory, copy_back=copy_back, end_session=end_session
        )
        try:
            reply = self._sender.send(request)
        except AbiFailure as failure:
            results = tuple(CommandResult(int(failure.code), failure.message) for _ in commands)
            reply = BatchResult(results, {})
        self.kernel_seconds += reply.kernel_seconds
        self.tenant_kernel_seconds = max(self.tenant_kernel_seconds, reply.tenant_kernel_seconds)
        if copy_back and memory is not None:
            self._copy_back(request, reply, memory)
        for result in reply.results[: len(queued)]:
            if result.code != 0:
                self._defer(AbiFailure(_abi_code(result.code), result.message))
        return reply.results[-1] if extra is not None else None

    def _copy_back(self, request: Batch, reply: BatchResult, memory: GuestMemory) -> None:
        for region in request.regions:
            data = reply.buffers.get(region.buffer_id)
            if data is None:
                continue
            if len(data) != len(region.data):
                self._defer(AbiFailure(AbiError.INTERNAL, "a copied-back buffer changed size"))
                continue
            memory.write(region.guest_offset, data)


def _entry_name(raw: bytes) -> str:
    if not 1 <= len(raw) <= MAX_ENTRY_BYTES:
        raise AbiFailure(
            AbiError.INVALID_ARGS, f"the entry name must be 1 to {MAX_ENTRY_BYTES} bytes"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AbiFailure(AbiError.INVALID_ARGS, "the entry name is not UTF-8") from None


def _abi_code(code: int) -> AbiError:
    """The ABI code of a dispatcher result (an unknown one is internal)."""
    try:
        return AbiError(code)
    except ValueError:
        return AbiError.INTERNAL
