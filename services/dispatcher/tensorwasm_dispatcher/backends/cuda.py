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
`finish` waits once per batch, polling `cuStreamQuery` until the work is done or the
call's deadline passes. Past it the stream is marked hung and `DeadlineExceeded` ends the
session; the kernel cannot be stopped inside a shared context, so its stream is kept (and
module unloads deferred) until the device reports it done. A per-tenant worker process with
its own context (the isolation issue) would end such a kernel by ending the process.

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
import threading
import time
from collections.abc import Sequence
from typing import Any

from tensorwasm_common.gpu_abi import AbiError, AbiFailure, ArgTag, Dim3, ScalarArg
from tensorwasm_kernels import LaunchGeometryError, check_geometry

from tensorwasm_dispatcher.backends.base import (
    Backend,
    BufferArg,
    DeadlineExceeded,
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
_NOT_READY = 600  # CUDA_ERROR_NOT_READY: cuStreamQuery's "still running"
# Dynamic shared memory a launch may use without opting in (the cpu backend's limit too).
MAX_DYNAMIC_SHARED_BYTES = 48 << 10
# The per-thread stack the context reserves for every resident thread.
STACK_BYTES_PER_THREAD = 1 << 10
# How often `finish` asks whether the stream is done: from this, doubling, to the cap.
_POLL_FIRST_SECONDS = 50e-6
_POLL_MAX_SECONDS = 2e-3


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


class _CudaStream(Stream):
    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.events: list[tuple[Any, Any]] = []  # (start, end) pairs, reused batch to batch
        self.launched = 0  # pairs recorded since the last finish
        self.keep: list[Any] = []  # host bytes queued copies read, until the stream is done
        self.hung = False


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
        self._call(driver.cuDevicePrimaryCtxSetFlags(self._device, int(blocking)))
        (self._context,) = self._call(driver.cuDevicePrimaryCtxRetain(self._device))
        self._current()
        stack = driver.CUlimit.CU_LIMIT_STACK_SIZE
        self._call(driver.cuCtxSetLimit(stack, STACK_BYTES_PER_THREAD))
        attribute = driver.CUdevice_attribute
        resident = self._attribute(
            attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
        ) * self._attribute(attribute.CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR)
        self.modules = ModuleLoading(driver, self._call, resident)
        self._lock = threading.Lock()
        self._hung: list[_CudaStream] = []  # streams past a deadline, until they finish
        self._deferred_unloads: list[Any] = []
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
        driver = self._driver
        self._current()
        self._reap()
        flags = driver.CUstream_flags.CU_STREAM_NON_BLOCKING
        (stream,) = self._call(driver.cuStreamCreate(int(flags)))
        return _CudaStream(stream)

    def close_stream(self, stream: Stream) -> None:
        """Releases a stream without waiting for it (its queued frees run in order; the
        driver releases a stream still running once its work is done)."""
        cuda_stream = _stream(stream)
        self._current()
        if cuda_stream.hung:
            return  # kept in `_hung` until the device is done with it (`_reap`)
        self._destroy(cuda_stream)

    def _destroy(self, cuda_stream: _CudaStream) -> None:
        for start, end in cuda_stream.events:
            self._call(self._driver.cuEventDestroy(start))
            self._call(self._driver.cuEventDestroy(end))
        cuda_stream.events.clear()
        self._call(self._driver.cuStreamDestroy(cuda_stream.stream))

    def _reap(self) -> None:
        """Releases the hung streams the device is done with, then deferred modules."""
        with self._lock:
            hung = list(self._hung)
        for cuda_stream in hung:
            (status, *_) = _as_tuple(self._driver.cuStreamQuery(cuda_stream.stream))
            if int(status) == _NOT_READY:
                continue
            with self._lock:
                self._hung.remove(cuda_stream)
            cuda_stream.hung = False
            self._destroy(cuda_stream)
        with self._lock:
            if self._hung:
                return
            modules, self._deferred_unloads = self._deferred_unloads, []
        for module in modules:
            self._call(self._driver.cuModuleUnload(module))

    def hung_streams(self) -> int:
        """Streams kept past a deadline until the device is done with them (checked now)."""
        self._current()
        self._reap()
        with self._lock:
            return len(self._hung)

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
        with self._lock:
            if self._hung:  # a hung kernel may be this module's: unload once it is done
                self._deferred_unloads.append(_kernel(kernel).module)
                return
        self._call(self._driver.cuModuleUnload(_kernel(kernel).module))

    def _alloc(self, size_bytes: int, cuda_stream: _CudaStream) -> Any:
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

    def _event_pair(self, cuda_stream: _CudaStream) -> tuple[Any, Any]:
        if cuda_stream.launched == len(cuda_stream.events):
            default = self._driver.CUevent_flags.CU_EVENT_DEFAULT
            (start,) = self._call(self._driver.cuEventCreate(int(default)))
            (end,) = self._call(self._driver.cuEventCreate(int(default)))
            cuda_stream.events.append((start, end))
        return cuda_stream.events[cuda_stream.launched]

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
            start, end = self._event_pair(cuda_stream)
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
        cuda_stream = _stream(stream)
        self._current()
        launched, cuda_stream.launched = cuda_stream.launched, 0
        try:
            self._wait(cuda_stream, deadline)
            seconds = 0.0
            for start, end in cuda_stream.events[:launched]:
                (milliseconds,) = self._call(self._driver.cuEventElapsedTime(start, end))
                seconds += float(milliseconds) / 1000.0
        except CudaCallError as exc:
            raise self._abi(AbiError.LAUNCH_FAILED, "the queued work failed", exc) from None
        finally:
            if not cuda_stream.hung:
                cuda_stream.keep.clear()
        return seconds

    def _wait(self, cuda_stream: _CudaStream, deadline: float | None) -> None:
        """Polls the stream until its work is done; past `deadline`, marks it hung.

        Raises:
            DeadlineExceeded: still running at the deadline.
            CudaCallError: the work failed.
        """
        pause = _POLL_FIRST_SECONDS
        while True:
            (status, *_) = _as_tuple(self._driver.cuStreamQuery(cuda_stream.stream))
            if int(status) != _NOT_READY:
                self._call(status)
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                cuda_stream.hung = True
                with self._lock:
                    self._hung.append(cuda_stream)
                raise DeadlineExceeded(
                    "the session's kernels were still running at the call's deadline; the "
                    "session is ended (its kernels, buffers and stream are released when the "
                    "device is done with them)"
                )
            time.sleep(pause if deadline is None else min(pause, deadline - now))
            pause = min(pause * 2, _POLL_MAX_SECONDS)

    def close(self) -> None:
        if self.cubins is not None:
            self.cubins.store.close()
        self._current()
        self._reap()
        with self._lock:
            hung = len(self._hung)
        if hung:
            # Releasing the context would wait for kernels that may never end: the
            # process exit ends them.
            _log.warning("closing with kernels still running", extra={"streams": hung})
            return
        self._call(self._driver.cuDevicePrimaryCtxRelease(self._device))


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


def _stream(stream: Stream) -> _CudaStream:
    if not isinstance(stream, _CudaStream):
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
