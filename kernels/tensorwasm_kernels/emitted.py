"""Kernels emitted by the jit cache: identified by their marker line, run with NumPy.

The jit cache starts every module it emits with `// tensorwasm-jit-kernel {json}` naming
the op, dtype, parameters, entry and emitter version (see `tensorwasm_jit.ptx.core`).
`lookup_emitted` reads that line, checks it names an op this module knows with valid
parameters and that the entry asked for is the one the emitter names for that op and
those parameters, and returns a `KernelSpec` whose reference computes what the emitted
PTX computes. The cpu backend trusts the marker: it does not re-derive the PTX, so a
module that carries a valid marker and other code runs as the op its marker names (the
cpu backend never executes PTX; on a GPU the PTX itself runs).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from tensorwasm_kernels import reference
from tensorwasm_kernels.catalog import KernelSpec
from tensorwasm_kernels.geometry import Dim3
from tensorwasm_kernels.params import Param, ParamKind

MARKER_PREFIX = b"// tensorwasm-jit-kernel "
EMITTER_VERSIONS = frozenset({3})

Buffers = Mapping[str, npt.NDArray[Any]]
Scalars = Mapping[str, Any]
Footprint = dict[str, int]

UNARY: dict[str, Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]] = {
    "relu": lambda x: np.fmax(x, np.float32(0)),
    "neg": np.negative,
    "abs": np.abs,
    "sqrt": np.sqrt,
    "exp": np.exp,
}
BINARY: dict[
    str, Callable[[npt.NDArray[np.float32], npt.NDArray[np.float32]], npt.NDArray[np.float32]]
] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "max": np.fmax,
    "min": np.fmin,
}
_ELEMENTWISE_DTYPES = frozenset({"f32", "f16"})
_PARAMS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    # op: (all its parameters, the required ones); defaults are always spelled out.
    "reduce_sum": (frozenset({"block"}), frozenset({"block"})),
    "matmul": (frozenset({"m", "n", "k", "tile"}), frozenset({"m", "n", "k", "tile"})),
    "conv2d": (frozenset({"height", "width"}), frozenset({"height", "width"})),
}
_MAX_DIM = 1 << 15


def _pointer(dtype: str, direction: str) -> ParamKind:
    return ParamKind(f"ptr_{dtype}_{direction}")


def _covered(count: int, threads: int) -> int:
    return max(0, min(count, threads))


def _elementwise_footprint(names: tuple[str, ...]) -> Callable[[Scalars, Dim3, Dim3], Footprint]:
    def footprint(scalars: Scalars, grid: Dim3, block: Dim3) -> Footprint:
        count = _covered(int(scalars["n"]), grid[0] * block[0])
        return dict.fromkeys(names, count)

    return footprint


def _elementwise_spec(op: str, dtype: str, entry: str) -> KernelSpec:
    """vector_add, saxpy, the unary and the binary ops: f32 arithmetic, rounded to dtype."""
    element = np.float16 if dtype == "f16" else np.float32
    read, written = _pointer(dtype, "in"), _pointer(dtype, "out")
    if op == "saxpy":
        params: tuple[Param, ...] = (Param("x", read), Param("y", _pointer(dtype, "inout")))
        scalars: tuple[Param, ...] = (Param("alpha", ParamKind.F32), Param("n", ParamKind.U32))

        def run(buffers: Buffers, values: Scalars, grid: Dim3, block: Dim3) -> None:
            reference.saxpy(buffers, values, grid, block)

        names: tuple[str, ...] = ("x", "y")
    elif op in UNARY:
        params, scalars, names = (Param("x", read), Param("y", written)), (), ("x", "y")
        function = UNARY[op]

        def run(buffers: Buffers, values: Scalars, grid: Dim3, block: Dim3) -> None:
            count = _covered(int(values["n"]), grid[0] * block[0])
            with np.errstate(all="ignore"):
                result = function(buffers["x"][:count].astype(np.float32))
                buffers["y"][:count] = result.astype(element)

    else:
        combine = BINARY["add" if op == "vector_add" else op]
        params = (Param("a", read), Param("b", read), Param("c", written))
        scalars, names = (), ("a", "b", "c")

        def run(buffers: Buffers, values: Scalars, grid: Dim3, block: Dim3) -> None:
            count = _covered(int(values["n"]), grid[0] * block[0])
            with np.errstate(all="ignore"):
                a = buffers["a"][:count].astype(np.float32)
                result = combine(a, buffers["b"][:count].astype(np.float32))
                buffers["c"][:count] = result.astype(element)

    return KernelSpec(
        name=entry,
        entry=entry,
        params=(*params, *scalars, *(() if op == "saxpy" else (Param("n", ParamKind.U32),))),
        summary=f"jit-emitted {op} ({dtype})",
        footprint_fn=_elementwise_footprint(names),
        reference_fn=run,
    )


def _reduce_sum_spec(entry: str, block_size: int) -> KernelSpec:
    def active(block: Dim3) -> bool:
        return block == (block_size, 1, 1)

    def footprint(scalars: Scalars, grid: Dim3, block: Dim3) -> Footprint:
        if not active(block):
            return {"input": 0, "output": 0}
        return reference.reduce_sum_footprint(scalars, grid, block)

    def run(buffers: Buffers, scalars: Scalars, grid: Dim3, block: Dim3) -> None:
        if active(block):
            reference.reduce_sum(buffers, scalars, grid, block)

    return KernelSpec(
        name=entry,
        entry=entry,
        params=(
            Param("input", ParamKind.PTR_F32_IN),
            Param("output", ParamKind.PTR_F32_INOUT),
            Param("n", ParamKind.U32),
        ),
        summary=f"jit-emitted reduce_sum, block ({block_size}, 1, 1)",
        footprint_fn=footprint,
        reference_fn=run,
    )


def _matmul_spec(entry: str, m: int, n: int, k: int, tile: int) -> KernelSpec:
    def extent(grid: Dim3, block: Dim3) -> tuple[int, int]:
        if block != (tile, tile, 1):
            return 0, 0  # the kernel returns at once
        return _covered(m, grid[1] * tile), _covered(n, grid[0] * tile)

    def footprint(scalars: Scalars, grid: Dim3, block: Dim3) -> Footprint:
        rows, cols = extent(grid, block)
        if not rows or not cols:
            return {"a": 0, "b": 0, "c": 0}
        return {"a": rows * k, "b": (k - 1) * n + cols, "c": (rows - 1) * n + cols}

    def run(buffers: Buffers, scalars: Scalars, grid: Dim3, block: Dim3) -> None:
        rows, cols = extent(grid, block)
        if not rows or not cols:
            return
        a = buffers["a"][: rows * k].reshape(rows, k).astype(np.float64)
        b = buffers["b"][: (k - 1) * n + cols]
        b_view = np.lib.stride_tricks.as_strided(b, (k, cols), (n * 4, 4)).astype(np.float64)
        out = np.lib.stride_tricks.as_strided(buffers["c"], (rows, cols), (n * 4, 4))
        with np.errstate(all="ignore"):
            out[...] = (a @ b_view).astype(np.float32)

    return KernelSpec(
        name=entry,
        entry=entry,
        params=(
            Param("a", ParamKind.PTR_F32_IN),
            Param("b", ParamKind.PTR_F32_IN),
            Param("c", ParamKind.PTR_F32_OUT),
        ),
        summary=f"jit-emitted matmul {m}x{k} @ {k}x{n}, tile {tile}",
        footprint_fn=footprint,
        reference_fn=run,
    )


def _conv2d_spec(entry: str, height: int, width: int) -> KernelSpec:
    shape = {"height": height, "width": width}

    def footprint(scalars: Scalars, grid: Dim3, block: Dim3) -> Footprint:
        return reference.conv2d_footprint(shape, grid, block)

    def run(buffers: Buffers, scalars: Scalars, grid: Dim3, block: Dim3) -> None:
        reference.conv2d(buffers, shape, grid, block)

    return KernelSpec(
        name=entry,
        entry=entry,
        params=(
            Param("input", ParamKind.PTR_F32_IN),
            Param("weights", ParamKind.PTR_F32_IN),
            Param("output", ParamKind.PTR_F32_OUT),
        ),
        summary=f"jit-emitted conv2d 3x3 over {height}x{width}",
        footprint_fn=footprint,
        reference_fn=run,
    )


def entry_name(op: str, dtype: str, params: Mapping[str, int]) -> str:
    """The entry the jit cache names a kernel: `tw_<op>_<dtype>` + `_<name><value>`."""
    return f"tw_{op}_{dtype}" + "".join(f"_{name}{params[name]}" for name in sorted(params))


def _spec_for(  # noqa: PLR0911 - one return per op family
    op: str, dtype: str, params: Mapping[str, int], entry: str
) -> KernelSpec | None:
    """The spec of a marker's kernel, or None when the op, dtype or parameters are unknown."""
    if op in {"vector_add", *UNARY, *BINARY}:
        return (
            _elementwise_spec(op, dtype, entry)
            if dtype in _ELEMENTWISE_DTYPES and not params
            else None
        )
    if op == "saxpy":
        return _elementwise_spec(op, dtype, entry) if dtype == "f32" and not params else None
    names = _PARAMS.get(op)
    if names is None or dtype != "f32" or set(params) != names[0]:
        return None
    if any(not 1 <= value <= _MAX_DIM for value in params.values()):
        return None
    if op == "reduce_sum":
        return _reduce_sum_spec(entry, params["block"])
    if op == "matmul":
        return _matmul_spec(entry, params["m"], params["n"], params["k"], params["tile"])
    return _conv2d_spec(entry, params["height"], params["width"])


def lookup_emitted(ptx: str | bytes, entry: str) -> KernelSpec | None:  # noqa: PLR0911
    """The kernel a jit-emitted module implements, launched through `entry`, or None.

    Args:
        ptx: The PTX a guest loaded, as text or UTF-8 bytes.
        entry: The entry symbol the guest asked for.

    Returns:
        A spec whose reference computes the emitted kernel, or None when the PTX has no
        valid marker, the marker names something unknown, or `entry` is not the entry the
        emitter gives that op and those parameters.
    """
    data = ptx.encode("utf-8") if isinstance(ptx, str) else bytes(ptx)
    if not data.startswith(MARKER_PREFIX):
        return None
    first_line = data.split(b"\n", 1)[0][len(MARKER_PREFIX) :]
    try:
        marker = json.loads(first_line)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("emitter_version") not in EMITTER_VERSIONS:
        return None
    op, dtype, params = marker.get("op"), marker.get("dtype"), marker.get("params")
    if not isinstance(op, str) or not isinstance(dtype, str) or not isinstance(params, dict):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in params.values()):
        return None
    if entry != marker.get("entry") or entry != entry_name(op, dtype, params):
        return None
    return _spec_for(op, dtype, params, entry)
