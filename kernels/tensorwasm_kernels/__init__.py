"""TensorWasm kernel library: CUDA sources, canonical PTX and NumPy references.

The dispatcher's cpu backend finds a guest's kernel with `lookup_by_ptx` and runs it with
`KernelSpec.run_reference`; the GPU tests use the same references as their oracle.
"""

from tensorwasm_kernels.catalog import (
    CATALOG,
    KernelSpec,
    lookup_by_entry,
    lookup_by_ptx,
    normalize_ptx,
    ptx_digest,
)
from tensorwasm_kernels.errors import KernelArgumentError, LaunchGeometryError
from tensorwasm_kernels.fp32 import fma_f32
from tensorwasm_kernels.geometry import (
    MAX_BLOCK_DIM,
    MAX_BLOCK_THREADS,
    MAX_GRID_DIM,
    Dim3,
    check_geometry,
)
from tensorwasm_kernels.params import F32Array, Param, ParamKind, Scalar, f32_view

__all__ = [
    "CATALOG",
    "MAX_BLOCK_DIM",
    "MAX_BLOCK_THREADS",
    "MAX_GRID_DIM",
    "Dim3",
    "F32Array",
    "KernelArgumentError",
    "KernelSpec",
    "LaunchGeometryError",
    "Param",
    "ParamKind",
    "Scalar",
    "check_geometry",
    "f32_view",
    "fma_f32",
    "lookup_by_entry",
    "lookup_by_ptx",
    "normalize_ptx",
    "ptx_digest",
]
