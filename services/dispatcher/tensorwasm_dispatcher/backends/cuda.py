"""The cuda backend: PTX modules, device buffers and launches through `cuda.bindings.driver`.

`cuda` is imported when a backend is created, never at module import, so the dispatcher
(and its tests) load without a driver. The primary context of one device, set to block
(not spin) a thread that waits for the device, is made current on whichever worker thread
calls in; each session gets its own non-blocking stream, and everything a session does
goes to that stream, in order: allocations and frees (`cuMemAllocAsync`/`cuMemFreeAsync`,
which never synchronise the device as `cuMemAlloc`/`cuMemFree` do), zero-fills, copies
and launches. Nothing uses the legacy NULL stream, which a non-blocking stream does not
wait for. Host bytes a queued copy reads are kept until the stream is waited for.

A launch is queued between a pair of events (the tenant's GPU time) and not waited for:
`finish` waits once per batch, bounded by the call's deadline (`cuda_streams`: past it,
`DeadlineExceeded` ends the session and the stream is kept until the device is done).

Every CUresult is checked in one place, `_call`, and mapped to an ABI code at this edge:
out of memory is quota_exceeded, a PTX the driver refuses is malformed_ptx (with ptxas's
diagnostics), anything else a launch or copy does is launch_failed. Before a launch
reaches the driver, what the driver cannot check is checked here, with the cpu backend's
codes: the grid and block against the device limits (-8), dynamic shared memory (-5), and
the argv against the parameters the driver reports (-9; see `cuda_modules`).

With cubin sharing on (`cubin_sharing.py`, a jit cache address), a PTX is loaded from the
cubin another dispatcher shared for this compute capability, or compiled here with the
driver's linker and shared. The `gpu`-marked tests run it on a device.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from typing import Any

from tensorwasm_common.gpu_abi import AbiError, AbiFailure, ArgTag, Dim3, ScalarArg
from tensorwasm_kernels import LaunchGeometryError, check_geometry

from tensorwasm_dispatcher.backends.base import (
    Backend,
    BufferArg,
    DeviceBuffer,
    Kernel,
    LaunchArg,
    LaunchResult,
    Stream,
    lead_bytes,
)
from tensorwasm_dispatcher.backends.cubin_sharing import (
    DEFAULT_LOCAL_BYTES,
    ArtifactStore,
    CubinSharing,
)
from tensorwasm_dispatcher.backends.cuda_modules import MAX_LOCAL_BYTES_PER_THREAD, ModuleLoading
from tensorwasm_dispatcher.backends.cuda_streams import CudaStream, Streams
from tensorwasm_dispatcher.backends.discovery import BackendKind, CudaCallError

_log = logging.getLogger(__name__)

_CTYPES = {
    ArgTag.I32: ctypes.c_int32,
    ArgTag.I64: ctypes.c_int64,
    ArgTag.F32: ctypes.c_uint32,  # the raw bits: the kernel reads them as an f32
    ArgTag.F64: ctypes.c_uint64,
    ArgTag.U32: ctypes.c_uint32,
    ArgTag.U64: ctypes.c_uint64,
}
_OUT_OF_MEMORY = 2  # CUDA_ERROR_OUT_OF_MEMORY
_PRIMARY_CONTEXT_ACTIVE = 708  # CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE (drivers before 11.x)
# Dynamic shared memory a launch may use without opting in (the cpu backend's limit too).
MAX_DYNAMIC_SHARED_BYTES = 48 << 10
# The per-thread stack the context reserves for every resident thread.
STACK_BYTES_PER_THREAD = 1 << 10


def _arg_size(arg: LaunchArg) -> int:
    return 8 if isinstance(arg, BufferArg) else arg.tag.value_bytes


class _CudaKernel(Kernel):
    def __init__(
        self,
        module: Any,
        function: Any,
        entry: str,
        param_sizes: tuple[int, ...] | None,
        device_bytes: int = 0,
    ) -> None:
        self.module = module
        self.function = function
        self.entry = entry
        self.param_sizes = param_sizes
        self.device_bytes = device_bytes


class _CudaBuffer(DeviceBuffer):
    """An allocation whose data starts `lead` bytes in (the guest address's alignment)."""

    def __init__(self, pointer: Any, size_bytes: int, lead: int = 0) -> None:
        self.pointer = pointer
        self.size_bytes = size_bytes
        self.lead = lead

    @property
    def address(self) -> int:
        return int(self.pointer) + self.lead


class CudaBackend(Backend):
    """One CUDA device's primary context, shared by every session."""

    kind = BackendKind.CUDA

    def __init__(
        self,
        ordinal: int = 0,
        *,
        artifacts: ArtifactStore | None = None,
        cubin_cache_bytes: int = DEFAULT_LOCAL_BYTES,
        driver: Any = None,
    ) -> None:
        """Initialises the driver and retains the device's primary context.

        Args:
            ordinal: The device.
            artifacts: Where cubins are shared (the jit cache); None: PTX is loaded as is.
            cubin_cache_bytes: The bound of sharing's in-process LRU of cubins.
            driver: `cuda.bindings.driver` (imported when None; a unit test's stand-in).

        Raises:
            CudaCallError: the driver or the device cannot be used.
        """
        if driver is None:
            from cuda.bindings import driver as cuda_driver

            driver = cuda_driver
        self._driver = driver
        self._call(driver.cuInit(0))
        (self._device,) = self._call(driver.cuDeviceGet(ordinal))
        # Before the context exists: a thread waiting for the device sleeps, never spins.
        blocking = driver.CUctx_flags.CU_CTX_SCHED_BLOCKING_SYNC
        (status, *_) = _as_tuple(driver.cuDevicePrimaryCtxSetFlags(self._device, int(blocking)))
        if int(status) == _PRIMARY_CONTEXT_ACTIVE:  # another backend in this process set it
            _log.warning("the primary context is active already: its flags stay as they are")
        else:
            self._call(status)
        (self._context,) = self._call(driver.cuDevicePrimaryCtxRetain(self._device))
        self._current()
        stack = driver.CUlimit.CU_LIMIT_STACK_SIZE
        self._call(driver.cuCtxSetLimit(stack, STACK_BYTES_PER_THREAD))
        attribute = driver.CUdevice_attribute
        resident = self._attribute(
            attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
        ) * self._attribute(attribute.CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR)
        self.modules = ModuleLoading(driver, self._call, resident)
        self.streams = Streams(driver, self._call)
        self.cubins: CubinSharing | None = None
        if artifacts is not None:
            self.cubins = CubinSharing(
                artifacts, self.compute_capability(), local_bytes=cubin_cache_bytes
            )

    def _attribute(self, attribute: Any) -> int:
        (value,) = self._call(self._driver.cuDeviceGetAttribute(attribute, self._device))
        return int(value)

    def compute_capability(self) -> str:
        """The device's target, e.g. `sm_90`."""
        attribute = self._driver.CUdevice_attribute
        major = self._attribute(attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
        minor = self._attribute(attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
        return f"sm_{major}{minor}"

    def load_image(self, image: bytes) -> Any:
        """Loads a cubin or NUL-terminated PTX image (cubin sharing's loader).

        Raises:
            CudaCallError: the driver refused it.
        """
        return self.modules.load_image(image)

    def compile_ptx(self, ptx: bytes) -> bytes:
        """The cubin the driver's JIT linker makes of a PTX (cubin sharing's compiler).

        Raises:
            CudaCallError: the driver refused the PTX.
        """
        return self.modules.compile_ptx(ptx)

    @staticmethod
    def _call(result: Any) -> tuple[Any, ...]:
        """The one check of every driver call's CUresult; returns the outputs."""
        status, *values = result if isinstance(result, tuple) else (result,)
        if int(status) != 0:
            raise CudaCallError(status)
        return tuple(values)

    def _current(self) -> None:
        """Makes the primary context current on the calling (worker) thread."""
        self._call(self._driver.cuCtxSetCurrent(self._context))

    def _abi(self, code: AbiError, what: str, exc: CudaCallError) -> AbiFailure:
        if int(exc.result) == _OUT_OF_MEMORY:
            code = AbiError.QUOTA_EXCEEDED
        detail = f"\n{exc.log}" if exc.log else ""
        return AbiFailure(code, f"{what}: {exc.result_name}{detail}")

    def open_stream(self) -> Stream:
        self._current()
        return self.streams.open()

    def close_stream(self, stream: Stream) -> None:
        """Releases a stream without waiting for it (its queued frees run in order)."""
        self._current()
        self.streams.close(_stream(stream))

    def hung_streams(self) -> int:
        """Streams kept past a deadline until the device is done with them (checked now)."""
        self._current()
        return self.streams.hung_count()

    def load(self, ptx: bytes, entry: str) -> Kernel:
        driver = self._driver
        self._current()
        try:
            if self.cubins is None:
                module = self.load_image(ptx if ptx.endswith(b"\0") else ptx + b"\0")
            else:
                module = self.cubins.load(ptx, self)
        except CudaCallError as exc:
            raise self._abi(AbiError.MALFORMED_PTX, "the driver refused the PTX", exc) from None
        try:
            (function,) = self._call(driver.cuModuleGetFunction(module, entry.encode("utf-8")))
            facts = self.modules.facts(module, function, ptx, len(ptx))
        except CudaCallError as exc:
            self._call(driver.cuModuleUnload(module))
            message = f"no kernel {entry!r} in the PTX"
            raise self._abi(AbiError.MALFORMED_PTX, message, exc) from None
        if facts.local_bytes_per_thread > MAX_LOCAL_BYTES_PER_THREAD:
            self._call(driver.cuModuleUnload(module))
            raise AbiFailure(
                AbiError.QUOTA_EXCEEDED,
                f"{entry} uses {facts.local_bytes_per_thread} bytes of local memory per "
                f"thread, more than {MAX_LOCAL_BYTES_PER_THREAD} (the device reserves it for "
                f"each of its {self.modules.resident_threads} resident threads)",
            )
        return _CudaKernel(module, function, entry, facts.param_sizes, facts.device_bytes)

    def unload(self, kernel: Kernel) -> None:
        self._current()
        module = _kernel(kernel).module
        if not self.streams.defer_unload(module):  # a hung kernel may be this module's
            self._call(self._driver.cuModuleUnload(module))

    def _alloc(self, size_bytes: int, cuda_stream: CudaStream) -> Any:
        try:
            (pointer,) = self._call(self._driver.cuMemAllocAsync(size_bytes, cuda_stream.stream))
        except CudaCallError as exc:
            raise self._abi(AbiError.INTERNAL, "cuMemAllocAsync failed", exc) from None
        return pointer

    def stage(self, data: bytes, stream: Stream, *, guest_offset: int = 0) -> DeviceBuffer:
        driver, cuda_stream = self._driver, _stream(stream)
        self._current()
        lead = lead_bytes(guest_offset)
        pointer = self._alloc(max(lead + len(data), 1), cuda_stream)
        buffer = _CudaBuffer(pointer, len(data), lead)
        if data:
            source = ctypes.create_string_buffer(data, len(data))
            copy = driver.cuMemcpyHtoDAsync
            try:
                self._call(
                    copy(buffer.address, ctypes.addressof(source), len(data), cuda_stream.stream)
                )
            except CudaCallError as exc:
                self._call(driver.cuMemFreeAsync(pointer, cuda_stream.stream))
                raise self._abi(AbiError.INTERNAL, "cuMemcpyHtoDAsync failed", exc) from None
            cuda_stream.keep.append(source)
        return buffer

    def read(self, buffer: DeviceBuffer, stream: Stream) -> bytes:
        return self.read_range(buffer, 0, buffer.size_bytes, stream)

    def allocate(self, size_bytes: int, stream: Stream) -> DeviceBuffer:
        driver, cuda_stream = self._driver, _stream(stream)
        self._current()
        pointer = self._alloc(max(size_bytes, 1), cuda_stream)
        try:
            fill = driver.cuMemsetD8Async(pointer, 0, max(size_bytes, 1), cuda_stream.stream)
            self._call(fill)
        except CudaCallError as exc:
            self._call(driver.cuMemFreeAsync(pointer, cuda_stream.stream))
            raise self._abi(AbiError.INTERNAL, "cuMemsetD8Async failed", exc) from None
        return _CudaBuffer(pointer, size_bytes)

    def write(self, buffer: DeviceBuffer, offset_bytes: int, data: bytes, stream: Stream) -> None:
        if not data:
            return
        device, cuda_stream = _buffer(buffer), _stream(stream)
        source = ctypes.create_string_buffer(data, len(data))
        target = device.address + offset_bytes
        self._current()
        try:
            copy = self._driver.cuMemcpyHtoDAsync
            self._call(copy(target, ctypes.addressof(source), len(data), cuda_stream.stream))
        except CudaCallError as exc:
            raise self._abi(AbiError.LAUNCH_FAILED, "copying to a device buffer", exc) from None
        cuda_stream.keep.append(source)  # read by the copy when the stream gets to it

    def read_range(
        self, buffer: DeviceBuffer, offset_bytes: int, length_bytes: int, stream: Stream
    ) -> bytes:
        device, cuda_stream = _buffer(buffer), _stream(stream)
        target = ctypes.create_string_buffer(length_bytes)
        self._current()
        try:
            if length_bytes:
                source = device.address + offset_bytes
                copy = self._driver.cuMemcpyDtoHAsync
                self._call(copy(ctypes.addressof(target), source, length_bytes, cuda_stream.stream))
            # The stream's kernels are done (the batch waited for them): only the copy is left.
            self._call(self._driver.cuStreamSynchronize(cuda_stream.stream))
        except CudaCallError as exc:
            raise self._abi(AbiError.LAUNCH_FAILED, "copying from a device buffer", exc) from None
        return target.raw

    def free(self, buffer: DeviceBuffer, stream: Stream) -> None:
        self._current()
        self._call(self._driver.cuMemFreeAsync(_buffer(buffer).pointer, _stream(stream).stream))

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
        driver = self._driver
        cuda_kernel = _kernel(kernel)
        cuda_stream, function = _stream(stream), cuda_kernel.function
        _check_launch(cuda_kernel, grid, block, shared_mem_bytes, args)
        slots: list[Any] = []
        for arg in args:
            if isinstance(arg, BufferArg):
                address = _buffer(arg.buffer).address + arg.offset_bytes
                slots.append(ctypes.c_uint64(address))
            elif isinstance(arg, ScalarArg):
                slots.append(_CTYPES[arg.tag](arg.value))
        # One pointer per parameter the driver reports (checked above); the driver copies
        # the values at the call, so `slots` need only outlive it.
        params = (ctypes.c_void_p * len(slots))(*[ctypes.addressof(s) for s in slots])
        self._current()
        try:
            start, end = self.streams.event_pair(cuda_stream)
            self._call(driver.cuEventRecord(start, cuda_stream.stream))
            launched = driver.cuLaunchKernel(
                function, *grid, *block, shared_mem_bytes, cuda_stream.stream,
                params if slots else None, 0,
            )  # fmt: skip
            self._call(launched)
            self._call(driver.cuEventRecord(end, cuda_stream.stream))
        except CudaCallError as exc:
            raise self._abi(AbiError.LAUNCH_FAILED, f"launching {kernel.entry}", exc) from None
        cuda_stream.launched += 1
        written = frozenset(i for i, arg in enumerate(args) if isinstance(arg, BufferArg))
        return LaunchResult(kernel_seconds=0.0, written=written)

    def finish(self, stream: Stream, deadline: float | None) -> float:
        self._current()
        try:
            return self.streams.finish(_stream(stream), deadline)
        except CudaCallError as exc:
            raise self._abi(AbiError.LAUNCH_FAILED, "the queued work failed", exc) from None

    def close(self) -> None:
        if self.cubins is not None:
            self.cubins.store.close()
        self._current()
        hung = self.streams.hung_count()
        if hung:
            # Releasing the context would wait for kernels that may never end: the
            # process exit ends them.
            _log.warning("closing with kernels still running", extra={"streams": hung})
            return
        self._call(self._driver.cuDevicePrimaryCtxRelease(self._device))

    def healthy(self) -> bool:
        """Whether the context still runs work: after a sticky error (an illegal address,
        a trap, a launch timeout) every later call of the context fails the same way, and
        only a new context (a new worker process) recovers. A kernel still running past its
        deadline counts too: nothing but the end of the context stops it (and
        `cuCtxSynchronize` would wait for it forever)."""
        try:
            self._current()
            if self.streams.hung_count():
                return False
            self._call(self._driver.cuCtxSynchronize())
        except CudaCallError:
            return False
        return True


def _as_tuple(result: Any) -> tuple[Any, ...]:
    return result if isinstance(result, tuple) else (result,)


def _check_launch(
    kernel: _CudaKernel, grid: Dim3, block: Dim3, shared_mem_bytes: int, args: Sequence[LaunchArg]
) -> None:
    """What the driver cannot check (or answers with one vague error), checked first."""
    try:
        check_geometry(grid, block)
    except LaunchGeometryError as exc:
        raise AbiFailure(AbiError.INVALID_DIMENSIONS, f"{kernel.entry}: {exc}") from None
    if shared_mem_bytes > MAX_DYNAMIC_SHARED_BYTES:
        raise AbiFailure(
            AbiError.LAUNCH_FAILED,
            f"{kernel.entry}: {shared_mem_bytes} bytes of dynamic shared memory, more than "
            f"the {MAX_DYNAMIC_SHARED_BYTES} a launch may use",
        )
    expected = kernel.param_sizes
    if expected is None:
        raise AbiFailure(
            AbiError.INVALID_ARGS,
            f"{kernel.entry}: the driver does not report the kernel's parameters, so the "
            f"argv cannot be checked against them",
        )
    got = tuple(_arg_size(arg) for arg in args)
    if got != expected:
        raise AbiFailure(
            AbiError.INVALID_ARGS,
            f"{kernel.entry} declares {len(expected)} parameters of {list(expected)} bytes; "
            f"the argv has {len(got)} of {list(got)} bytes",
        )


def _stream(stream: Stream) -> CudaStream:
    if not isinstance(stream, CudaStream):
        raise TypeError("not a stream of the cuda backend")
    return stream


def _kernel(kernel: Kernel) -> _CudaKernel:
    if not isinstance(kernel, _CudaKernel):
        raise TypeError("not a kernel of the cuda backend")
    return kernel


def _buffer(buffer: DeviceBuffer) -> _CudaBuffer:
    if not isinstance(buffer, _CudaBuffer):
        raise TypeError("not a buffer of the cuda backend")
    return buffer
