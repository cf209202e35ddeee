"""The cpu backend: runs PTX on the host, through the PTX executor or NumPy references.

By default every kernel runs as written, through the PTX executor (`backends.ptx`). With
`kernels="reference"`, the kernel library's kernels (found by identity: `lookup_by_ptx`,
the canonical PTX text and its entry) and the jit cache's emitted kernels (by their
marker line and entry: `lookup_emitted`) run their NumPy references instead, and any
other PTX still runs through the executor. Staged buffers are host bytearrays written in
place, so a batch's launches see each other's writes. Kernel time is the wall time of the
launch.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence

import numpy as np
from tensorwasm_common.gpu_abi import AbiError, AbiFailure, ArgTag, Dim3, ScalarArg
from tensorwasm_kernels import (
    KernelArgumentError,
    KernelSpec,
    LaunchGeometryError,
    ParamKind,
    check_geometry,
    lookup_by_ptx,
)
from tensorwasm_kernels.emitted import lookup_emitted
from tensorwasm_kernels.params import element_view

from tensorwasm_dispatcher.backends.base import (
    Backend,
    BufferArg,
    DeviceBuffer,
    Kernel,
    LaunchArg,
    LaunchResult,
    Stream,
)
from tensorwasm_dispatcher.backends.discovery import BackendKind
from tensorwasm_dispatcher.backends.ptx import PointerArg, PtxExecutor, PtxKernel

# Dynamic shared memory a launch may ask for without opting in (cuLaunchKernel refuses
# more); the references need none, but the cpu backend refuses what a GPU would.
MAX_DYNAMIC_SHARED_BYTES = 48 << 10
# The argv tags a scalar parameter of each kind takes (a C `int` takes i32 or u32 alike).
_SCALAR_TAGS = {
    ParamKind.I32: frozenset({ArgTag.I32, ArgTag.U32}),
    ParamKind.U32: frozenset({ArgTag.I32, ArgTag.U32}),
    ParamKind.F32: frozenset({ArgTag.F32}),
}


class CpuKernels(enum.StrEnum):
    """How the cpu backend runs the kernels it recognises."""

    PTX = "ptx"  # every kernel through the PTX executor
    REFERENCE = "reference"  # library and emitted kernels by their NumPy references


class _PtxKernel(Kernel):
    def __init__(self, kernel: PtxKernel) -> None:
        self.kernel = kernel
        self.entry = kernel.entry


class _CpuKernel(Kernel):
    def __init__(self, spec: KernelSpec) -> None:
        self.spec = spec
        self.entry = spec.entry
        # The positions of the parameters a launch writes (the same for every launch).
        self.written = frozenset(
            position for position, param in enumerate(spec.params) if param.kind.is_written
        )


class _CpuBuffer(DeviceBuffer):
    def __init__(self, data: bytes) -> None:
        self.data = bytearray(data)
        self.size_bytes = len(data)


class _CpuStream(Stream):
    """Launches run synchronously on the calling thread; the stream orders nothing more."""


class CpuBackend(Backend):
    """Runs kernels of `tensorwasm_kernels` on the host."""

    kind = BackendKind.CPU

    def open_stream(self) -> Stream:
        return _CpuStream()

    def close_stream(self, stream: Stream) -> None:
        pass

    def __init__(
        self,
        *,
        kernels: CpuKernels = CpuKernels.PTX,
        launch_timeout_seconds: float = 60.0,
        executor: PtxExecutor | None = None,
    ) -> None:
        """A cpu backend.

        Args:
            kernels: Whether recognised kernels run as PTX or as NumPy references.
            launch_timeout_seconds: How long one PTX launch may run before it is stopped
                (a launch failure, as a GPU watchdog would report).
            executor: The PTX executor (its translation cache); a new one if None.
        """
        self.kernels = kernels
        self.launch_timeout_seconds = launch_timeout_seconds
        self.executor = executor or PtxExecutor()

    def load(self, ptx: bytes, entry: str) -> Kernel:
        if self.kernels is CpuKernels.REFERENCE:
            spec = lookup_by_ptx(ptx, entry) or lookup_emitted(ptx, entry)
            if spec is not None:
                return _CpuKernel(spec)
        return _PtxKernel(self.executor.load(ptx, entry))

    def unload(self, kernel: Kernel) -> None:
        pass

    def stage(self, data: bytes, stream: Stream, *, guest_offset: int = 0) -> DeviceBuffer:
        return _CpuBuffer(data)

    def read(self, buffer: DeviceBuffer, stream: Stream) -> bytes:
        return bytes(_cpu_buffer(buffer).data)

    def allocate(self, size_bytes: int, stream: Stream) -> DeviceBuffer:
        return _CpuBuffer(bytes(size_bytes))

    def write(self, buffer: DeviceBuffer, offset_bytes: int, data: bytes, stream: Stream) -> None:
        _cpu_buffer(buffer).data[offset_bytes : offset_bytes + len(data)] = data

    def read_range(
        self, buffer: DeviceBuffer, offset_bytes: int, length_bytes: int, stream: Stream
    ) -> bytes:
        return bytes(_cpu_buffer(buffer).data[offset_bytes : offset_bytes + length_bytes])

    def free(self, buffer: DeviceBuffer, stream: Stream) -> None:
        _cpu_buffer(buffer).data = bytearray()

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
        if isinstance(kernel, _PtxKernel):
            limit = time.monotonic() + self.launch_timeout_seconds
            return self._launch_ptx(
                kernel, grid=grid, block=block, shared_mem_bytes=shared_mem_bytes, args=args,
                deadline=limit,
            )  # fmt: skip
        if not isinstance(kernel, _CpuKernel):
            raise TypeError("not a kernel of the cpu backend")
        spec = kernel.spec
        try:
            check_geometry(grid, block)
        except LaunchGeometryError as exc:
            raise AbiFailure(AbiError.INVALID_DIMENSIONS, f"{spec.name}: {exc}") from None
        if shared_mem_bytes > MAX_DYNAMIC_SHARED_BYTES:
            raise AbiFailure(
                AbiError.LAUNCH_FAILED,
                f"{spec.name}: {shared_mem_bytes} bytes of dynamic shared memory, more than "
                f"the {MAX_DYNAMIC_SHARED_BYTES} a launch may use",
            )
        buffers, scalars = _bind(spec, args)
        started = time.perf_counter()
        try:
            spec.run_reference(buffers, scalars, grid, block)
        except LaunchGeometryError as exc:
            raise AbiFailure(AbiError.INVALID_DIMENSIONS, f"{spec.name}: {exc}") from None
        except KernelArgumentError as exc:  # a GPU would fault: a buffer too short
            raise AbiFailure(AbiError.LAUNCH_FAILED, str(exc)) from None
        elapsed = time.perf_counter() - started
        return LaunchResult(kernel_seconds=elapsed, written=kernel.written)

    def _launch_ptx(
        self,
        kernel: _PtxKernel,
        *,
        grid: Dim3,
        block: Dim3,
        shared_mem_bytes: int,
        args: Sequence[LaunchArg],
        deadline: float,
    ) -> LaunchResult:
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
        bound = [
            PointerArg(_cpu_buffer(arg.buffer).data, arg.offset_bytes, arg.guest_offset)
            if isinstance(arg, BufferArg)
            else arg
            for arg in args
        ]
        started = time.perf_counter()
        written = self.executor.launch(
            kernel.kernel,
            grid=grid,
            block=block,
            shared_mem_bytes=shared_mem_bytes,
            args=bound,
            deadline=deadline,
        )
        elapsed = time.perf_counter() - started
        return LaunchResult(kernel_seconds=elapsed, written=written)


def _cpu_buffer(buffer: DeviceBuffer) -> _CpuBuffer:
    if not isinstance(buffer, _CpuBuffer):
        raise TypeError("not a buffer of the cpu backend")
    return buffer


def _bind(
    spec: KernelSpec, args: Sequence[LaunchArg]
) -> tuple[list[np.ndarray], list[int | np.float32]]:
    """Matches the argv records to the kernel's parameters, position by position.

    Raises:
        AbiFailure: INVALID_ARGS for a wrong count or a record of the wrong kind;
            LAUNCH_FAILED for a misaligned pointer (the GPU would fault).
    """
    if len(args) != len(spec.params):
        raise AbiFailure(
            AbiError.INVALID_ARGS,
            f"{spec.name} takes {len(spec.params)} arguments "
            f"({', '.join(p.name for p in spec.params)}), got {len(args)}",
        )
    buffers: list[np.ndarray] = []
    scalars: list[int | np.float32] = []
    for position, (param, arg) in enumerate(zip(spec.params, args, strict=True)):
        where = f"{spec.name} argument {position} ({param.name})"
        if param.kind.is_pointer:
            if not isinstance(arg, BufferArg):
                raise AbiFailure(AbiError.INVALID_ARGS, f"{where} is a pointer, got {_kind(arg)}")
            address = arg.guest_offset
            dtype = param.kind.element_dtype
            if address % dtype.itemsize:
                raise AbiFailure(
                    AbiError.LAUNCH_FAILED,
                    f"{where}: misaligned address {address} for {dtype.name} "
                    f"(needs {dtype.itemsize})",
                )
            data = _cpu_buffer(arg.buffer).data
            window = memoryview(data)[arg.offset_bytes : arg.offset_bytes + arg.length_bytes]
            buffers.append(element_view(window, dtype))
            continue
        if not isinstance(arg, ScalarArg) or arg.tag not in _SCALAR_TAGS[param.kind]:
            expected = "/".join(t.name.lower() for t in sorted(_SCALAR_TAGS[param.kind]))
            raise AbiFailure(AbiError.INVALID_ARGS, f"{where} takes {expected}, got {_kind(arg)}")
        if arg.tag is ArgTag.F32:
            bits = np.array([arg.value], dtype=np.uint32)
            scalars.append(np.float32(bits.view(np.float32)[0]))
        else:
            scalars.append(arg.value)
    return buffers, scalars


def _kind(arg: LaunchArg) -> str:
    return "ptr" if isinstance(arg, BufferArg) else arg.tag.name.lower()
