"""The kernel catalogue: each kernel's parameters, canonical PTX, identity and reference."""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import blake3
import numpy as np
import numpy.typing as npt

from tensorwasm_kernels import reference
from tensorwasm_kernels.errors import KernelArgumentError
from tensorwasm_kernels.geometry import Dim3, check_geometry
from tensorwasm_kernels.params import (
    Param,
    ParamKind,
    Scalar,
    check_buffer,
    coerce_scalar,
)

FootprintFn = Callable[[reference.Scalars, Dim3, Dim3], dict[str, int]]
ReferenceFn = Callable[[reference.Buffers, reference.Scalars, Dim3, Dim3], None]


def normalize_ptx(ptx: str | bytes) -> bytes:
    """The bytes a PTX identity is computed over.

    Line endings become LF, and trailing NULs and whitespace go (a C string's terminator,
    a missing or extra final newline); nothing else changes.

    Args:
        ptx: PTX text, as a str or its UTF-8 bytes.

    Returns:
        The normalised UTF-8 bytes.
    """
    data = ptx.encode("utf-8") if isinstance(ptx, str) else bytes(ptx)
    return data.replace(b"\r\n", b"\n").rstrip(b"\0 \t\r\n")


def ptx_digest(ptx: str | bytes) -> str:
    """The BLAKE3 hex digest (64 lowercase hex digits) of `normalize_ptx(ptx)`."""
    return blake3.blake3(normalize_ptx(ptx)).hexdigest()


@functools.cache
def _resource_text(*parts: str) -> str:
    resource = importlib.resources.files("tensorwasm_kernels").joinpath(*parts)
    return resource.read_text(encoding="utf-8")


@functools.cache
def _resource_digest(*parts: str) -> str:
    return ptx_digest(_resource_text(*parts))


@dataclass(frozen=True)
class KernelSpec:
    """One kernel of the library: its entry point, parameters, PTX and NumPy reference.

    Attributes:
        name: The kernel's name; its files are `cu/<name>.cu` and `ptx/<name>.ptx`.
        entry: The `.visible .entry` symbol in the PTX.
        params: The parameters in launch order.
        summary: One line on what it computes and how to launch it.
        footprint_fn: `reference.<name>_footprint`.
        reference_fn: `reference.<name>`.
    """

    name: str
    entry: str
    params: tuple[Param, ...]
    summary: str
    footprint_fn: FootprintFn = field(repr=False, compare=False)
    reference_fn: ReferenceFn = field(repr=False, compare=False)

    @property
    def pointer_params(self) -> tuple[Param, ...]:
        """The buffer parameters, in launch order."""
        return tuple(p for p in self.params if p.kind.is_pointer)

    @property
    def scalar_params(self) -> tuple[Param, ...]:
        """The scalar parameters, in launch order."""
        return tuple(p for p in self.params if not p.kind.is_pointer)

    def ptx_text(self) -> str:
        """The canonical PTX shipped in the package (`.target sm_80`)."""
        return _resource_text("ptx", f"{self.name}.ptx")

    def cuda_source(self) -> str:
        """The CUDA C++ source the canonical PTX was generated from."""
        return _resource_text("cu", f"{self.name}.cu")

    @property
    def ptx_digest(self) -> str:
        """The BLAKE3 identity of the canonical PTX (see `ptx_digest`)."""
        return _resource_digest("ptx", f"{self.name}.ptx")

    def footprint(
        self, scalars: Sequence[Scalar], grid: Sequence[int], block: Sequence[int]
    ) -> dict[str, int]:
        """How many f32 elements of each buffer a launch touches, from the buffer's start.

        Args:
            scalars: The scalar arguments, in the order of `scalar_params`.
            grid: Blocks per grid (x, y, z).
            block: Threads per block (x, y, z).

        Returns:
            The element count per pointer parameter name; a buffer shorter than its count
            would make the GPU fault.

        Raises:
            KernelArgumentError: Wrong number or kinds of scalars, or a launch geometry
                CUDA rejects (`LaunchGeometryError`).
        """
        return self.footprint_fn(*self._prepare(scalars, grid, block))

    def run_reference(
        self,
        buffers: Sequence[npt.NDArray[Any]],
        scalars: Sequence[Scalar],
        grid: Sequence[int],
        block: Sequence[int],
    ) -> None:
        """Runs the kernel on the CPU: writes what the GPU would write, in place.

        Elements the launch does not reach are left untouched, exactly as on the GPU.

        Args:
            buffers: The pointer arguments, in the order of `pointer_params`: C-contiguous
                float32 arrays (any shape; their flat element order is the buffer), writable
                where the kernel writes. `f32_view` makes them from staged bytes.
            scalars: The scalar arguments, in the order of `scalar_params`, as Python or
                NumPy numbers (32-bit integer parameters take [-2**31, 2**32)).
            grid: Blocks per grid (x, y, z).
            block: Threads per block (x, y, z).

        Raises:
            KernelArgumentError: Wrong number or kinds of arguments, a read-only output, or
                a buffer shorter than what the launch touches (where the GPU would fault).
            LaunchGeometryError: A grid or block CUDA would not launch.
        """
        if len(buffers) != len(self.pointer_params):
            raise KernelArgumentError(
                f"{self.name} takes {len(self.pointer_params)} buffers "
                f"({_names(self.pointer_params)}), got {len(buffers)}"
            )
        flat = {
            p.name: check_buffer(p, b) for p, b in zip(self.pointer_params, buffers, strict=True)
        }
        values, checked_grid, checked_block = self._prepare(scalars, grid, block)
        needed = self.footprint_fn(values, checked_grid, checked_block)
        for param in self.pointer_params:
            have, need = flat[param.name].size, needed[param.name]
            if have < need:
                size = param.kind.element_dtype.itemsize
                kind = f"f{8 * size}"  # f32, f16
                raise KernelArgumentError(
                    f"{self.name}: buffer {param.name} has {have} {kind} elements "
                    f"({have * size} bytes) but the launch touches {need} ({need * size} bytes)",
                    param=param.name,
                )
        self.reference_fn(flat, values, checked_grid, checked_block)

    def _prepare(
        self, scalars: Sequence[Scalar], grid: Sequence[int], block: Sequence[int]
    ) -> tuple[dict[str, int | np.float32], Dim3, Dim3]:
        """Checks the scalars (count, kinds) and the geometry."""
        if len(scalars) != len(self.scalar_params):
            raise KernelArgumentError(
                f"{self.name} takes {len(self.scalar_params)} scalars "
                f"({_names(self.scalar_params)}), got {len(scalars)}"
            )
        values = {
            p.name: coerce_scalar(p, v) for p, v in zip(self.scalar_params, scalars, strict=True)
        }
        checked_grid, checked_block = check_geometry(grid, block)
        return values, checked_grid, checked_block


def _names(params: Sequence[Param]) -> str:
    return ", ".join(p.name for p in params)


_IN, _OUT, _INOUT = ParamKind.PTR_F32_IN, ParamKind.PTR_F32_OUT, ParamKind.PTR_F32_INOUT
_I32, _F32 = ParamKind.I32, ParamKind.F32


def _spec(name: str, summary: str, *params: tuple[str, ParamKind]) -> KernelSpec:
    return KernelSpec(
        name=name,
        entry=name,
        params=tuple(Param(param_name, kind) for param_name, kind in params),
        summary=summary,
        footprint_fn=getattr(reference, f"{name}_footprint"),
        reference_fn=getattr(reference, name),
    )


CATALOG: Mapping[str, KernelSpec] = MappingProxyType(
    {
        spec.entry: spec
        for spec in (
            _spec(
                "vector_add",
                "c[i] = a[i] + b[i] for i < n; 1-D, e.g. block (256,1,1), grid (ceil(n/256),1,1)",
                ("a", _IN),
                ("b", _IN),
                ("c", _OUT),
                ("n", _I32),
            ),
            _spec(
                "saxpy",
                "y[i] = alpha * x[i] + y[i] (one fma) for i < n; 1-D like vector_add",
                ("x", _IN),
                ("y", _INOUT),
                ("alpha", _F32),
                ("n", _I32),
            ),
            _spec(
                "matmul",
                "C[m x n] = A[m x k] @ B[k x n], row-major; block (16,16,1), "
                "grid (ceil(n/16), ceil(m/16), 1)",
                ("a", _IN),
                ("b", _IN),
                ("c", _OUT),
                ("m", _I32),
                ("n", _I32),
                ("k", _I32),
            ),
            _spec(
                "conv2d",
                "3x3 single-channel conv, same zero padding, output height x width; 2-D, "
                "e.g. block (16,16,1), grid (ceil(width/16), ceil(height/16), 1)",
                ("input", _IN),
                ("weights", _IN),
                ("output", _OUT),
                ("height", _I32),
                ("width", _I32),
            ),
            _spec(
                "reduce_sum",
                "*output += sum(input[:n]) (zero output first); 1-D grid-stride, any grid",
                ("input", _IN),
                ("output", _INOUT),
                ("n", _I32),
            ),
        )
    }
)


def lookup_by_entry(entry: str) -> KernelSpec | None:
    """The catalogue's kernel with this entry symbol, or None."""
    return CATALOG.get(entry)


def lookup_by_ptx(ptx: str | bytes, entry: str) -> KernelSpec | None:
    """The catalogue's kernel whose canonical PTX this is, launched through `entry`.

    Identity is the entry symbol plus the BLAKE3 digest of the normalised PTX text, so
    only the library's own PTX matches: any other PTX, even for the same entry, is None.

    Args:
        ptx: The PTX a guest loaded, as text or UTF-8 bytes.
        entry: The entry symbol the guest asked for.

    Returns:
        The kernel, or None when the PTX is not the canonical PTX of `entry`.
    """
    spec = CATALOG.get(entry)
    if spec is None or ptx_digest(ptx) != spec.ptx_digest:
        return None
    return spec
