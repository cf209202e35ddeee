"""The devices a batch runs on: the backend interface, the cpu backend, device discovery.

`base` is the interface the dispatcher needs from a device; `cpu` runs kernels on the
host (PTX through the executor in `ptx`, or NumPy references), `cuda` on a CUDA device
through the driver API (imported only when a cuda backend is opened, so the dispatcher
starts without `cuda`), with its module side in `cuda_modules` and its session streams and
deadline-bounded waits in `cuda_streams`, sharing cubins through the jit cache
(`cubin_sharing`); `discovery` finds the devices and says which backend to open.
"""

from tensorwasm_dispatcher.backends.base import (
    Backend,
    BufferArg,
    DeviceBuffer,
    Kernel,
    LaunchArg,
    LaunchResult,
    Stream,
)
from tensorwasm_dispatcher.backends.cpu import CpuBackend, CpuKernels
from tensorwasm_dispatcher.backends.cubin_sharing import JitArtifactStore
from tensorwasm_dispatcher.backends.discovery import (
    BackendKind,
    DeviceInfo,
    DeviceReport,
    cpu_report,
    discover,
)

__all__ = [
    "Backend",
    "BackendKind",
    "BufferArg",
    "CpuBackend",
    "CpuKernels",
    "DeviceBuffer",
    "DeviceInfo",
    "DeviceReport",
    "JitArtifactStore",
    "Kernel",
    "LaunchArg",
    "LaunchResult",
    "Stream",
    "cpu_report",
    "discover",
]
