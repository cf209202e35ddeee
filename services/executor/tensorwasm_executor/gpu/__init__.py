"""The GPU bridge: the `wasi:cuda` and `tensorwasm:gpu` host modules, each guest's GPU
session and its batches to the dispatcher, the jit cache client, registered kernels and
auto-offload."""

from tensorwasm_executor.gpu.dispatcher_client import DispatcherClient
from tensorwasm_executor.gpu.host import GPU_MODULES, CudaHost
from tensorwasm_executor.gpu.jit_client import JitClient
from tensorwasm_executor.gpu.jit_ops import JitHost
from tensorwasm_executor.gpu.registered import RegisteredKernelHost
from tensorwasm_executor.gpu.registry_client import KernelRegistryClient

__all__ = [
    "GPU_MODULES",
    "CudaHost",
    "DispatcherClient",
    "JitClient",
    "JitHost",
    "KernelRegistryClient",
    "RegisteredKernelHost",
]
