"""The cuda backend: PTX modules, device buffers and launches through `cuda.bindings.driver`.

`cuda` is imported when a backend is created, never at module import, so the dispatcher
(and its tests) load without a driver. The primary context of one device is made current
on whichever worker thread calls in; each session gets its own stream; every launch is
timed with a pair of events (the tenant's GPU time). Every CUresult is checked in one
place, `_call`, and mapped to an ABI code at this edge: out of memory is quota_exceeded,
a PTX the driver refuses is malformed_ptx, anything else a launch does is launch_failed.

Before a launch reaches the driver, what the driver cannot check is checked here, with
the cpu backend's codes: the grid and block against the device limits (-8), and the
argv records against the entry's declared `.param` list, count and sizes (-9): the
driver reads as many parameter bytes as the kernel declares, so a short argv would make
it read past the host's parameter array.

With cubin sharing on (`cubin_sharing.py`, a jit cache address), a PTX is loaded from the
cubin another dispatcher shared for this compute capability, or compiled here with the
driver's linker and shared.

Not exercised without a GPU: the `gpu`-marked tests run it on a device.
"""

from __future__ import annotations

import ctypes
import re
import time
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
)
from tensorwasm_dispatcher.backends.cubin_sharing import (
    DEFAULT_LOCAL_BYTES,
    ArtifactStore,
    CubinSharing,
)
from tensorwasm_dispatcher.backends.discovery import BackendKind, CudaCallError

_CTYPES = {
    ArgTag.I32: ctypes.c_int32,
    ArgTag.I64: ctypes.c_int64,
    ArgTag.F32: ctypes.c_uint32,  # the raw bits: the kernel reads them as an f32
    ArgTag.F64: ctypes.c_uint64,
    ArgTag.U32: ctypes.c_uint32,
    ArgTag.U64: ctypes.c_uint64,
}
_OUT_OF_MEMORY = 2  # CUDA_ERROR_OUT_OF_MEMORY
# Dynamic shared memory a launch may use without opting in (the cpu backend's limit too).
MAX_DYNAMIC_SHARED_BYTES = 48 << 10
_PARAM = re.compile(
    r"\.param\s+(?:\.align\s+\d+\s+)?\.([a-z]+)(\d+)\s+[A-Za-z_$%][\w$]*\s*(?:\[(\d+)\])?"
)


def entry_param_sizes(ptx: bytes, entry: str) -> tuple[int, ...] | None:
    """The byte sizes of the `.param`s of `.entry <entry>(...)`, in order (None when the
    declaration cannot be read: the launch is then not checked)."""
    text = ptx.decode("utf-8", errors="replace")
    found = re.search(r"\.entry\s+" + re.escape(entry) + r"\s*\(([^)]*)\)", text)
    if found is None:
        return None
    sizes = []
    for declaration in filter(None, (part.strip() for part in found[1].split(","))):
        param = _PARAM.fullmatch(declaration)
        if param is None:
            return None
        width = int(param[2]) // 8
        sizes.append(width * int(param[3]) if param[3] else width)
    return tuple(sizes)


def _arg_size(arg: LaunchArg) -> int:
    return 8 if isinstance(arg, BufferArg) else arg.tag.value_bytes


class _CudaKernel(Kernel):
    def __init__(
        self, module: Any, function: Any, entry: str, param_sizes: tuple[int, ...] | None
    ) -> None:
        self.module = module
        self.function = function
        self.entry = entry
        self.param_sizes = param_sizes


class _CudaBuffer(DeviceBuffer):
    def __init__(self, pointer: Any, size_bytes: int) -> None:
        self.pointer = pointer
        self.size_bytes = size_bytes


class _CudaStream(Stream):
    def __init__(self, stream: Any, start: Any, end: Any) -> None:
        self.stream = stream
        self.start = start
        self.end = end


class CudaBackend(Backend):
    """One CUDA device's primary context, shared by every session."""

    kind = BackendKind.CUDA

    def __init__(
        self,
        ordinal: int = 0,
        *,
        artifacts: ArtifactStore | None = None,
        cubin_cache_bytes: int = DEFAULT_LOCAL_BYTES,
    ) -> None:
        """Initialises the driver and retains the device's primary context.

        Args:
            ordinal: The device.
            artifacts: Where cubins are shared (the jit cache); None: PTX is loaded as is.
            cubin_cache_bytes: The bound of sharing's in-process LRU of cubins.

        Raises:
            CudaCallError: the driver or the device cannot be used.
        """
        from cuda.bindings import driver

        self._driver = driver
        self._call(driver.cuInit(0))
        (self._device,) = self._call(driver.cuDeviceGet(ordinal))
        (self._context,) = self._call(driver.cuDevicePrimaryCtxRetain(self._device))
        self.cubins: CubinSharing | None = None
        if artifacts is not None:
            self.cubins = CubinSharing(
                artifacts, self.compute_capability(), local_bytes=cubin_cache_bytes
            )

    def compute_capability(self) -> str:
        """The device's target, e.g. `sm_90`."""
        attribute = self._driver.CUdevice_attribute
        (major,) = self._call(
            self._driver.cuDeviceGetAttribute(
                attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, self._device
            )
        )
        (minor,) = self._call(
            self._driver.cuDeviceGetAttribute(
                attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, self._device
            )
        )
        return f"sm_{int(major)}{int(minor)}"

    def load_image(self, image: bytes) -> Any:
        """Loads a cubin or NUL-terminated PTX image (the context must be current).

        Raises:
            CudaCallError: the driver refused it.
        """
        buffer = ctypes.create_string_buffer(image, len(image))
        (module,) = self._call(self._driver.cuModuleLoadDataEx(ctypes.addressof(buffer), 0, [], []))
        return module

    def compile_ptx(self, ptx: bytes) -> bytes:
        """The cubin the driver's JIT linker makes of a PTX for this device (the context
        must be current).

        Raises:
            CudaCallError: the driver refused the PTX.
        """
        driver = self._driver
        image = ptx if ptx.endswith(b"\0") else ptx + b"\0"
        buffer = ctypes.create_string_buffer(image, len(image))
        (state,) = self._call(driver.cuLinkCreate(0, [], []))
        try:
            self._call(
                driver.cuLinkAddData(
                    state,
                    driver.CUjitInputType.CU_JIT_INPUT_PTX,
                    ctypes.addressof(buffer),
                    len(image),
                    b"tensorwasm.ptx",
                    0,
                    [],
                    [],
                )
            )
            cubin, size = self._call(driver.cuLinkComplete(state))
            # The image belongs to the link state: copy it before destroying the state.
            return ctypes.string_at(int(cubin), int(size))
        finally:
            self._call(driver.cuLinkDestroy(state))

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
        return AbiFailure(code, f"{what}: {exc.result_name}")

    def open_stream(self) -> Stream:
        driver = self._driver
        self._current()
        flags = driver.CUstream_flags.CU_STREAM_NON_BLOCKING
        (stream,) = self._call(driver.cuStreamCreate(flags))
        (start,) = self._call(driver.cuEventCreate(driver.CUevent_flags.CU_EVENT_DEFAULT))
        (end,) = self._call(driver.cuEventCreate(driver.CUevent_flags.CU_EVENT_DEFAULT))
        return _CudaStream(stream, start, end)

    def close_stream(self, stream: Stream) -> None:
        cuda_stream = _stream(stream)
        self._current()
        self._call(self._driver.cuStreamSynchronize(cuda_stream.stream))
        self._call(self._driver.cuEventDestroy(cuda_stream.start))
        self._call(self._driver.cuEventDestroy(cuda_stream.end))
        self._call(self._driver.cuStreamDestroy(cuda_stream.stream))

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
        except CudaCallError as exc:
            self._call(driver.cuModuleUnload(module))
            message = f"no kernel {entry!r} in the PTX"
            raise self._abi(AbiError.MALFORMED_PTX, message, exc) from None
        return _CudaKernel(module, function, entry, entry_param_sizes(ptx, entry))

    def unload(self, kernel: Kernel) -> None:
        self._current()
        self._call(self._driver.cuModuleUnload(_kernel(kernel).module))

    def stage(self, data: bytes) -> DeviceBuffer:
        driver = self._driver
        self._current()
        try:
            (pointer,) = self._call(driver.cuMemAlloc(max(len(data), 1)))
        except CudaCallError as exc:
            raise self._abi(AbiError.INTERNAL, "cuMemAlloc failed", exc) from None
        if data:
            source = ctypes.create_string_buffer(data, len(data))
            try:
                self._call(driver.cuMemcpyHtoD(pointer, ctypes.addressof(source), len(data)))
            except CudaCallError as exc:
                self._call(driver.cuMemFree(pointer))
                raise self._abi(AbiError.INTERNAL, "cuMemcpyHtoD failed", exc) from None
        return _CudaBuffer(pointer, len(data))

    def read(self, buffer: DeviceBuffer, stream: Stream) -> bytes:
        device = _buffer(buffer)
        self._current()
        self._call(self._driver.cuStreamSynchronize(_stream(stream).stream))
        target = ctypes.create_string_buffer(device.size_bytes)
        if device.size_bytes:
            copy = self._driver.cuMemcpyDtoH
            self._call(copy(ctypes.addressof(target), device.pointer, device.size_bytes))
        return target.raw

    def allocate(self, size_bytes: int) -> DeviceBuffer:
        driver = self._driver
        self._current()
        try:
            (pointer,) = self._call(driver.cuMemAlloc(max(size_bytes, 1)))
        except CudaCallError as exc:
            raise self._abi(AbiError.INTERNAL, "cuMemAlloc failed", exc) from None
        try:
            self._call(driver.cuMemsetD8(pointer, 0, max(size_bytes, 1)))
        except CudaCallError as exc:
            self._call(driver.cuMemFree(pointer))
            raise self._abi(AbiError.INTERNAL, "cuMemsetD8 failed", exc) from None
        return _CudaBuffer(pointer, size_bytes)

    def write(self, buffer: DeviceBuffer, offset_bytes: int, data: bytes, stream: Stream) -> None:
        if not data:
            return
        device, cuda_stream = _buffer(buffer), _stream(stream)
        source = ctypes.create_string_buffer(data, len(data))
        target = int(device.pointer) + offset_bytes
        self._current()
        try:
            # In the stream's order (after its launches), and done before `source` goes.
            copy = self._driver.cuMemcpyHtoDAsync
            self._call(copy(target, ctypes.addressof(source), len(data), cuda_stream.stream))
            self._call(self._driver.cuStreamSynchronize(cuda_stream.stream))
        except CudaCallError as exc:
            raise self._abi(AbiError.LAUNCH_FAILED, "copying to a device buffer", exc) from None

    def read_range(
        self, buffer: DeviceBuffer, offset_bytes: int, length_bytes: int, stream: Stream
    ) -> bytes:
        device = _buffer(buffer)
        target = ctypes.create_string_buffer(length_bytes)
        self._current()
        try:
            self._call(self._driver.cuStreamSynchronize(_stream(stream).stream))
            if length_bytes:
                source = int(device.pointer) + offset_bytes
                copy = self._driver.cuMemcpyDtoH
                self._call(copy(ctypes.addressof(target), source, length_bytes))
        except CudaCallError as exc:
            raise self._abi(AbiError.LAUNCH_FAILED, "copying from a device buffer", exc) from None
        return target.raw

    def free(self, buffer: DeviceBuffer) -> None:
        self._current()
        self._call(self._driver.cuMemFree(_buffer(buffer).pointer))

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
        del deadline  # a running kernel cannot be stopped (the driver's watchdog may)
        driver = self._driver
        cuda_kernel = _kernel(kernel)
        cuda_stream, function = _stream(stream), cuda_kernel.function
        _check_launch(cuda_kernel, grid, block, shared_mem_bytes, args)
        slots: list[Any] = []
        for arg in args:
            if isinstance(arg, BufferArg):
                base = int(_buffer(arg.buffer).pointer)
                slots.append(ctypes.c_uint64(base + arg.offset_bytes))
            elif isinstance(arg, ScalarArg):
                slots.append(_CTYPES[arg.tag](arg.value))
        # cuLaunchKernel copies the values at the call: `slots` need only outlive it.
        params = (ctypes.c_void_p * max(len(slots), 1))(*[ctypes.addressof(s) for s in slots])
        self._current()
        started = time.perf_counter()
        try:
            self._call(driver.cuEventRecord(cuda_stream.start, cuda_stream.stream))
            launched = driver.cuLaunchKernel(
                function, *grid, *block, shared_mem_bytes, cuda_stream.stream,
                ctypes.addressof(params), 0,
            )  # fmt: skip
            self._call(launched)
            self._call(driver.cuEventRecord(cuda_stream.end, cuda_stream.stream))
            self._call(driver.cuStreamSynchronize(cuda_stream.stream))
            elapsed = driver.cuEventElapsedTime(cuda_stream.start, cuda_stream.end)
            (milliseconds,) = self._call(elapsed)
            seconds = float(milliseconds) / 1000.0
        except CudaCallError as exc:
            raise self._abi(AbiError.LAUNCH_FAILED, f"launching {kernel.entry}", exc) from None
        if seconds <= 0.0:
            seconds = time.perf_counter() - started
        written = frozenset(i for i, arg in enumerate(args) if isinstance(arg, BufferArg))
        return LaunchResult(kernel_seconds=seconds, written=written)

    def close(self) -> None:
        if self.cubins is not None:
            self.cubins.store.close()
        self._call(self._driver.cuDevicePrimaryCtxRelease(self._device))


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
        return
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
