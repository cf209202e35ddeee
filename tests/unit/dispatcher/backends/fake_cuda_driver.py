"""A recording stand-in for `cuda.bindings.driver`, for unit tests of the cuda backend.

It keeps the real module's enums and CUresult codes and fakes what a device does: streams
are FIFO queues of operations that run when the stream is queried or synchronised, so
work on one stream happens in its order and only then; device memory is a set of host
byte arrays at 256-aligned fake addresses; a kernel runs a Python behaviour registered by
entry name (`vector_add`, `spin`, ...), and a fault makes the context's error sticky, as
on a GPU. Every call is recorded with its arguments, and the fake refuses what a real
device would punish silently: a copy, memset, allocation or launch on the legacy NULL
stream, a `kernelParams` array with fewer or more entries than the kernel has parameters,
and a `cuStreamSynchronize` on a stream that will never finish (the test would hang).

Parameter lists, `.global` sizes and `.local` frames are read from the PTX the backend
loads, with comments and LLVM/Triton-style qualifiers (`.ptr .global .align 1`), as the
driver would; the backend itself must not need to read them.
"""

from __future__ import annotations

import ctypes
import itertools
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cuda.bindings import driver as real

Result = real.CUresult
SUCCESS = Result.CUDA_SUCCESS
_SIZES = {"8": 1, "16": 2, "32": 4, "64": 8}


@dataclass
class Call:
    """One recorded driver call."""

    name: str
    args: tuple[Any, ...]


@dataclass
class Function:
    """A kernel the fake loaded: its entry, parameter sizes, local frame per thread."""

    module: int
    entry: str
    param_sizes: list[int]
    local_bytes: int


@dataclass
class Launch:
    """What a kernel behaviour gets: the geometry and each parameter's bytes."""

    entry: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    params: list[bytes]

    def pointer(self, index: int) -> int:
        (value,) = struct.unpack("<Q", self.params[index])
        return int(value)

    def u32(self, index: int) -> int:
        (value,) = struct.unpack("<I", self.params[index])
        return int(value)


class Hang(Exception):  # noqa: N818 - a control signal inside the fake, never raised out
    """Raised by a behaviour whose kernel never ends."""


@dataclass
class Stream:
    handle: int
    queue: list[Callable[[], None]] = field(default_factory=list)
    clock_ms: float = 0.0
    destroyed: bool = False


def _strip_comments(text: str) -> str:
    return re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.DOTALL)


def parse_params(declarations: str) -> list[int]:
    """The byte sizes of a `.param` list, as the driver lays them out."""
    sizes = []
    for declaration in filter(None, (d.strip() for d in declarations.split(","))):
        array = re.search(r"\.b8\s+\w+\s*\[(\d+)\]", declaration)
        if array:
            sizes.append(int(array[1]))
            continue
        kind = re.search(r"\.[usbf](8|16|32|64)\b", declaration)
        assert kind is not None, declaration
        sizes.append(_SIZES[kind[1]])
    return sizes


class FakeDriver:
    """See the module docstring. Register kernel behaviours in `behaviours`."""

    CUresult = real.CUresult
    CUstream_flags = real.CUstream_flags
    CUevent_flags = real.CUevent_flags
    CUctx_flags = real.CUctx_flags
    CUlimit = real.CUlimit
    CUdevice_attribute = real.CUdevice_attribute
    CUfunction_attribute = real.CUfunction_attribute
    CUjit_option = real.CUjit_option
    CUjitInputType = real.CUjitInputType

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.memory: dict[int, bytearray] = {}
        self.streams: dict[int, Stream] = {}
        self.events: dict[int, float | None] = {}
        self.modules: dict[int, dict[str, Function]] = {}
        self.globals: dict[int, dict[str, int]] = {}
        self.functions: dict[int, Function] = {}
        self.sticky: Result | None = None
        self.report_params = True
        self.fail: dict[str, Result] = {}  # a call name -> the result it returns instead
        self.limits: dict[Any, int] = {}
        self.context_flags: int | None = None
        self.retained = 0
        self.behaviours: dict[str, Callable[[FakeDriver, Launch], None]] = {
            "vector_add": vector_add,
            "spin": spin,
            "noop": lambda driver, launch: None,
        }
        self._handles = itertools.count(0x100)
        self._addresses = itertools.count(0x7F0000000000, 1 << 24)
        self._links: dict[int, tuple[bytearray | None, bytes]] = {}
        self._keep: list[Any] = []

    # -- bookkeeping ---------------------------------------------------------------------

    def _record(self, name: str, *args: Any) -> Result | None:
        self.calls.append(Call(name, args))
        if name in self.fail:
            return self.fail[name]
        return None

    def named(self, name: str) -> list[Call]:
        """The recorded calls of one function."""
        return [call for call in self.calls if call.name == name]

    def _stream(self, handle: Any, name: str) -> Stream:
        assert handle not in (None, 0), f"{name} on the legacy NULL stream"
        stream = self.streams[int(handle)]
        assert not stream.destroyed, f"{name} on a destroyed stream"
        return stream

    def _range(self, address: int, size: int) -> tuple[bytearray, int]:
        for base, data in self.memory.items():
            if base <= address and address + size <= base + len(data):
                return data, address - base
        raise IndexError(f"[{address:#x}, +{size}) is outside every allocation")

    def read(self, address: int, size: int) -> bytes:
        data, offset = self._range(address, size)
        return bytes(data[offset : offset + size])

    def write(self, address: int, payload: bytes) -> None:
        data, offset = self._range(address, len(payload))
        data[offset : offset + len(payload)] = payload

    def _run(self, stream: Stream) -> Result:
        """Runs the stream's queued work until it is done or an operation hangs."""
        while stream.queue and self.sticky is None:
            operation = stream.queue[0]
            try:
                operation()
            except Hang:
                return Result.CUDA_ERROR_NOT_READY
            stream.queue.pop(0)
        if self.sticky is not None:
            stream.queue.clear()
            return self.sticky
        return SUCCESS

    def hung(self, stream: Any) -> bool:
        return bool(self.streams[int(stream)].queue)

    def end_hung_kernels(self) -> None:
        """The device finally finishes the kernels that were spinning."""
        self.behaviours["spin"] = lambda driver, launch: None

    # -- context -------------------------------------------------------------------------

    def cuInit(self, flags: int) -> tuple[Result]:
        return (self._record("cuInit", flags) or SUCCESS,)

    def cuDeviceGet(self, ordinal: int) -> tuple[Result, int]:
        return (self._record("cuDeviceGet", ordinal) or SUCCESS, ordinal)

    def cuDevicePrimaryCtxSetFlags(self, device: int, flags: int) -> tuple[Result]:
        self._record("cuDevicePrimaryCtxSetFlags", device, flags)
        if self.retained:  # as drivers before CUDA 11 answer
            return (Result.CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE,)
        self.context_flags = int(flags)
        return (SUCCESS,)

    def cuDevicePrimaryCtxRetain(self, device: int) -> tuple[Result, int]:
        self._record("cuDevicePrimaryCtxRetain", device)
        self.retained += 1
        return (SUCCESS, 0xC0)

    def cuDevicePrimaryCtxRelease(self, device: int) -> tuple[Result]:
        self._record("cuDevicePrimaryCtxRelease", device)
        self.retained -= 1
        return (SUCCESS,)

    def cuCtxSetCurrent(self, context: int) -> tuple[Result]:
        return (SUCCESS,)  # not recorded: called before every operation

    def cuCtxSynchronize(self) -> tuple[Result]:
        self._record("cuCtxSynchronize")
        for stream in self.streams.values():
            result = self._run(stream)
            assert result != Result.CUDA_ERROR_NOT_READY, "cuCtxSynchronize would never return"
            if result != SUCCESS:
                return (result,)
        return (self.sticky or SUCCESS,)

    def cuCtxSetLimit(self, limit: Any, value: int) -> tuple[Result]:
        self._record("cuCtxSetLimit", limit, value)
        self.limits[limit] = value
        return (SUCCESS,)

    def cuDeviceGetAttribute(self, attribute: Any, device: int) -> tuple[Result, int]:
        values = {
            real.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: 132,
            real.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: 2048,
            real.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: 9,
            real.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: 0,
        }
        return (SUCCESS, values[attribute])

    # -- streams and events --------------------------------------------------------------

    def cuStreamCreate(self, flags: int) -> tuple[Result, int]:
        self._record("cuStreamCreate", flags)
        assert int(flags) == int(real.CUstream_flags.CU_STREAM_NON_BLOCKING)
        handle = next(self._handles)
        self.streams[handle] = Stream(handle)
        return (SUCCESS, handle)

    def cuStreamDestroy(self, stream: int) -> tuple[Result]:
        self._record("cuStreamDestroy", stream)
        self._stream(stream, "cuStreamDestroy").destroyed = True
        return (SUCCESS,)

    def cuStreamQuery(self, stream: int) -> tuple[Result]:
        self._record("cuStreamQuery", stream)
        return (self._run(self._stream(stream, "cuStreamQuery")),)

    def cuStreamSynchronize(self, stream: int) -> tuple[Result]:
        self._record("cuStreamSynchronize", stream)
        result = self._run(self._stream(stream, "cuStreamSynchronize"))
        assert result != Result.CUDA_ERROR_NOT_READY, "cuStreamSynchronize would never return"
        return (result,)

    def cuEventCreate(self, flags: int) -> tuple[Result, int]:
        self._record("cuEventCreate", flags)
        handle = next(self._handles)
        self.events[handle] = None
        return (SUCCESS, handle)

    def cuEventDestroy(self, event: int) -> tuple[Result]:
        self._record("cuEventDestroy", event)
        del self.events[event]
        return (SUCCESS,)

    def cuEventRecord(self, event: int, stream: int) -> tuple[Result]:
        self._record("cuEventRecord", event, stream)
        target = self._stream(stream, "cuEventRecord")
        self.events[event] = None

        def record() -> None:
            self.events[event] = target.clock_ms

        target.queue.append(record)
        return (SUCCESS,)

    def cuEventElapsedTime(self, start: int, end: int) -> tuple[Result, float]:
        self._record("cuEventElapsedTime", start, end)
        began, ended = self.events[start], self.events[end]
        if began is None or ended is None:
            return (Result.CUDA_ERROR_NOT_READY, 0.0)
        return (SUCCESS, ended - began)

    # -- memory --------------------------------------------------------------------------

    def cuMemAllocAsync(self, size: int, stream: int) -> tuple[Result, int]:
        failed = self._record("cuMemAllocAsync", size, stream)
        self._stream(stream, "cuMemAllocAsync")
        if failed:
            return (failed, 0)
        address = next(self._addresses)
        assert size < 1 << 24
        self.memory[address] = bytearray(b"\xab" * size)  # garbage until written or zeroed
        return (SUCCESS, address)

    def cuMemFreeAsync(self, address: int, stream: int) -> tuple[Result]:
        self._record("cuMemFreeAsync", address, stream)
        target = self._stream(stream, "cuMemFreeAsync")
        target.queue.append(lambda: self.memory.pop(int(address)))
        return (SUCCESS,)

    def cuMemsetD8Async(self, address: int, value: int, count: int, stream: int) -> tuple[Result]:
        self._record("cuMemsetD8Async", address, value, count, stream)
        target = self._stream(stream, "cuMemsetD8Async")
        target.queue.append(lambda: self.write(int(address), bytes([value]) * count))
        return (SUCCESS,)

    def cuMemcpyHtoDAsync(self, target: int, source: int, size: int, stream: int) -> tuple[Result]:
        self._record("cuMemcpyHtoDAsync", target, source, size, stream)
        queue = self._stream(stream, "cuMemcpyHtoDAsync").queue
        # The host bytes are read when the stream gets to the copy: they must still exist.
        queue.append(lambda: self.write(int(target), ctypes.string_at(source, size)))
        return (SUCCESS,)

    def cuMemcpyDtoHAsync(self, target: int, source: int, size: int, stream: int) -> tuple[Result]:
        failed = self._record("cuMemcpyDtoHAsync", target, source, size, stream)
        queue = self._stream(stream, "cuMemcpyDtoHAsync").queue
        if failed:
            return (failed,)
        queue.append(lambda: ctypes.memmove(target, self.read(int(source), size), size))
        return (SUCCESS,)

    # -- modules -------------------------------------------------------------------------

    def _log_buffer(self, options: list[Any], values: list[Any]) -> bytearray | None:
        for option, value in zip(options, values, strict=True):
            if option == real.CUjit_option.CU_JIT_ERROR_LOG_BUFFER:
                assert isinstance(value, bytearray)
                return value
        return None

    def _load(self, text: str) -> int:
        handle = next(self._handles)
        code = _strip_comments(text)
        functions = {}
        for found in re.finditer(r"\.entry\s+(\w+)\s*\(([^)]*)\)\s*\{(.*?)\n\}", code, re.DOTALL):
            entry, params, body = found.groups()
            local = sum(int(n) for n in re.findall(r"\.local\s+[^;]*?\.b8\s+\w+\[(\d+)\]", body))
            functions[entry] = Function(handle, entry, parse_params(params), local)
        self.modules[handle] = functions
        self.globals[handle] = {
            name: int(count)
            for name, count in re.findall(r"\.global\s+[^;{]*?\.b8\s+(\w+)\[(\d+)\]", code)
        }
        return handle

    def cuModuleLoadDataEx(
        self, image: int, count: int, options: list[Any], values: list[Any]
    ) -> tuple[Result, int]:
        self._record("cuModuleLoadDataEx", image, count, options, values)
        assert count == len(options) == len(values)
        data = ctypes.string_at(image)
        if data.startswith(b"FAKECUBIN"):
            data = data[len(b"FAKECUBIN") :]
        text = data.decode()
        if ".entry" not in text or "garbage" in text:
            log = self._log_buffer(options, values)
            if log is not None:
                message = b"ptxas fatal   : Unexpected token 'garbage'\0"
                log[: len(message)] = message
            return (Result.CUDA_ERROR_INVALID_PTX, 0)
        return (SUCCESS, self._load(text))

    def cuModuleUnload(self, module: int) -> tuple[Result]:
        self._record("cuModuleUnload", module)
        del self.modules[module]
        return (SUCCESS,)

    def cuModuleGetFunction(self, module: int, name: bytes) -> tuple[Result, int]:
        self._record("cuModuleGetFunction", module, name)
        function = self.modules[module].get(name.decode())
        if function is None:
            return (Result.CUDA_ERROR_NOT_FOUND, 0)
        handle = next(self._handles)
        self.functions[handle] = function
        return (SUCCESS, handle)

    def cuModuleGetGlobal(self, module: int, name: bytes) -> tuple[Result, int, int]:
        self._record("cuModuleGetGlobal", module, name)
        size = self.globals[module].get(name.decode())
        if size is None:
            return (Result.CUDA_ERROR_NOT_FOUND, 0, 0)
        return (SUCCESS, 0xD000, size)

    def cuFuncGetParamCount(self, function: int) -> tuple[Result, int]:
        self._record("cuFuncGetParamCount", function)
        if not self.report_params:
            return (Result.CUDA_ERROR_NOT_SUPPORTED, 0)
        return (SUCCESS, len(self.functions[function].param_sizes))

    def cuFuncGetParamInfo(self, function: int, index: int) -> tuple[Result, int, int]:
        self._record("cuFuncGetParamInfo", function, index)
        sizes = self.functions[function].param_sizes
        return (SUCCESS, sum(sizes[:index]), sizes[index])

    def cuFuncGetAttribute(self, attribute: Any, function: int) -> tuple[Result, int]:
        attributes = real.CUfunction_attribute
        if attribute == attributes.CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES:
            return (SUCCESS, self.functions[function].local_bytes)
        assert attribute == attributes.CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES, attribute
        return (SUCCESS, 0)

    def cuLinkCreate(self, count: int, options: list[Any], values: list[Any]) -> tuple[Result, int]:
        self._record("cuLinkCreate", count, options, values)
        handle = next(self._handles)
        self._links[handle] = (self._log_buffer(options, values), b"")
        return (SUCCESS, handle)

    def cuLinkAddData(
        self, state: int, kind: Any, data: int, size: int, *rest: Any
    ) -> tuple[Result]:
        self._record("cuLinkAddData", state, kind, size)
        log, _ = self._links[state]
        text = ctypes.string_at(data, size).rstrip(b"\0")
        if b"garbage" in text:
            if log is not None:
                message = b"ptxas fatal   : Unexpected token 'garbage'\0"
                log[: len(message)] = message
            return (Result.CUDA_ERROR_INVALID_PTX,)
        self._links[state] = (log, text)
        return (SUCCESS,)

    def cuLinkComplete(self, state: int) -> tuple[Result, int, int]:
        self._record("cuLinkComplete", state)
        cubin = ctypes.create_string_buffer(b"FAKECUBIN" + self._links[state][1])
        self._keep.append(cubin)
        return (SUCCESS, ctypes.addressof(cubin), len(cubin.raw) - 1)

    def cuLinkDestroy(self, state: int) -> tuple[Result]:
        return (self._record("cuLinkDestroy", state) or SUCCESS,)

    # -- launches ------------------------------------------------------------------------

    def cuLaunchKernel(
        self, function: int, gx: int, gy: int, gz: int, bx: int, by: int, bz: int,
        shared: int, stream: int, params: Any, extra: Any,
    ) -> tuple[Result]:  # fmt: skip
        target = self._stream(stream, "cuLaunchKernel")
        kernel = self.functions[function]
        sizes = kernel.param_sizes
        if not sizes:
            assert params is None, "kernelParams for a kernel without parameters"
        else:
            # The driver reads one pointer per parameter: the array must have exactly that many.
            assert isinstance(params, ctypes.Array), type(params)
            entries, declared = len(params), len(sizes)
            assert entries == declared, (
                f"kernelParams has {entries} entries, {kernel.entry} {declared}"
            )
        # The driver copies the values at the call: so does the record.
        values = [ctypes.string_at(params[i], size) for i, size in enumerate(sizes)]
        launch = Launch(kernel.entry, (gx, gy, gz), (bx, by, bz), values)
        self._record("cuLaunchKernel", function, launch.grid, launch.block, stream, params, launch)

        def run() -> None:
            self.behaviours[kernel.entry](self, launch)
            target.clock_ms += 1.0  # every kernel takes 1 ms of fake device time

        target.queue.append(run)
        return (SUCCESS,)


def vector_add(driver: FakeDriver, launch: Launch) -> None:
    """c[i] = a[i] + b[i] for i < n; a misaligned f32 pointer faults (716, sticky)."""
    a, b, c = (launch.pointer(i) for i in range(3))
    n = min(launch.u32(3), launch.grid[0] * launch.block[0])
    if any(pointer % 4 for pointer in (a, b, c)):
        driver.sticky = Result.CUDA_ERROR_MISALIGNED_ADDRESS
        return
    left = np.frombuffer(driver.read(a, 4 * n), np.float32)
    right = np.frombuffer(driver.read(b, 4 * n), np.float32)
    driver.write(c, (left + right).astype(np.float32).tobytes())


def spin(driver: FakeDriver, launch: Launch) -> None:
    """A kernel that never ends (until `end_hung_kernels`)."""
    raise Hang
