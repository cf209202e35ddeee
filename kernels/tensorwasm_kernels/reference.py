"""NumPy references of the kernels: what one launch computes, its geometry included.

Each kernel has two functions. `<kernel>_footprint(scalars, grid, block)` returns, per
pointer parameter, how many f32 elements from the start of the buffer the launch touches
(the buffer must be at least that long). `<kernel>(buffers, scalars, grid, block)` writes
what the GPU would write, in place, and leaves every element the launch does not reach
as it was. Both take arguments already checked by `KernelSpec.run_reference`: buffers are
flat float32 views keyed by parameter name, scalars the values the kernel sees.

vector_add, saxpy and conv2d are bit-exact with the PTX (their fused multiply-adds are
emulated exactly, in the kernel's order) for every non-NaN result. matmul accumulates in
f64 and rounds once; reduce_sum sums in f64 and adds the sum to the output once: the GPU
rounds after each step, in an order of its own, so these agree within f32 rounding error.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tensorwasm_kernels.fp32 import fma_f32
from tensorwasm_kernels.geometry import Dim3
from tensorwasm_kernels.params import F32Array

Buffers = Mapping[str, F32Array]
Scalars = Mapping[str, int | np.float32]
Footprint = dict[str, int]

MATMUL_TILE = 16


def _covered(count: int, threads: int) -> int:
    """How many of the indices [0, count) one thread each of `threads` threads reaches."""
    return max(0, min(count, threads))


def _rows(flat: F32Array, rows: int, cols: int, row_stride: int) -> F32Array:
    """A (rows, cols) view of a flat buffer whose rows start `row_stride` elements apart."""
    view: F32Array = np.lib.stride_tricks.as_strided(
        flat,
        shape=(rows, cols),
        strides=(row_stride * flat.itemsize, flat.itemsize),
        writeable=flat.flags.writeable,
    )
    return view


# --- vector_add: c[i] = a[i] + b[i] ------------------------------------------------------


def vector_add_footprint(scalars: Scalars, grid: Dim3, block: Dim3) -> Footprint:
    """a, b and c are touched at [0, min(n, grid.x * block.x))."""
    count = _covered(int(scalars["n"]), grid[0] * block[0])
    return {"a": count, "b": count, "c": count}


def vector_add(buffers: Buffers, scalars: Scalars, grid: Dim3, block: Dim3) -> None:
    """c[i] = a[i] + b[i] for the covered i (an f32 add rounds like the GPU's add.f32)."""
    count = _covered(int(scalars["n"]), grid[0] * block[0])
    with np.errstate(all="ignore"):
        np.add(buffers["a"][:count], buffers["b"][:count], out=buffers["c"][:count])


# --- saxpy: y[i] = alpha * x[i] + y[i] ----------------------------------------------------


def saxpy_footprint(scalars: Scalars, grid: Dim3, block: Dim3) -> Footprint:
    """x and y are touched at [0, min(n, grid.x * block.x))."""
    count = _covered(int(scalars["n"]), grid[0] * block[0])
    return {"x": count, "y": count}


def saxpy(buffers: Buffers, scalars: Scalars, grid: Dim3, block: Dim3) -> None:
    """y[i] = fma(alpha, x[i], y[i]) for the covered i; y and z only repeat slice 0."""
    count = _covered(int(scalars["n"]), grid[0] * block[0])
    y = buffers["y"][:count]
    y[...] = fma_f32(scalars["alpha"], buffers["x"][:count], y)


# --- matmul: C = A @ B, tiled 16 x 16 ------------------------------------------------------


def _matmul_extent(scalars: Scalars, grid: Dim3, block: Dim3) -> tuple[int, int, int]:
    """The rows and columns of C the launch computes, and the depth k it reads."""
    if block != (MATMUL_TILE, MATMUL_TILE, 1):
        return 0, 0, 0  # the kernel returns at once: its tiles need exactly this block
    rows = _covered(int(scalars["m"]), grid[1] * MATMUL_TILE)
    cols = _covered(int(scalars["n"]), grid[0] * MATMUL_TILE)
    return rows, cols, max(0, int(scalars["k"]))


def matmul_footprint(scalars: Scalars, grid: Dim3, block: Dim3) -> Footprint:
    """A's covered rows, B's covered columns (every tile loads them), C's covered block."""
    rows, cols, depth = _matmul_extent(scalars, grid, block)
    n = max(0, int(scalars["n"]))
    return {
        "a": rows * depth,
        "b": (depth - 1) * n + cols if depth and cols else 0,
        "c": (rows - 1) * n + cols if rows and cols else 0,
    }


def matmul(buffers: Buffers, scalars: Scalars, grid: Dim3, block: Dim3) -> None:
    """C[:rows, :cols] = A[:rows, :] @ B[:, :cols], accumulated in f64, rounded once."""
    rows, cols, depth = _matmul_extent(scalars, grid, block)
    if rows == 0 or cols == 0:
        return
    n = int(scalars["n"])
    a = buffers["a"][: rows * depth].reshape(rows, depth)
    b = _rows(buffers["b"], depth, cols, n)
    c = _rows(buffers["c"], rows, cols, n)
    with np.errstate(all="ignore"):
        c[...] = (a.astype(np.float64) @ b.astype(np.float64)).astype(np.float32)


# --- conv2d: 3x3, "same" zero padding -------------------------------------------------------


def _conv2d_extent(scalars: Scalars, grid: Dim3, block: Dim3) -> tuple[int, int, int, int]:
    """The image's height and width, and the output rows and columns the launch computes."""
    height = max(0, int(scalars["height"]))
    width = max(0, int(scalars["width"]))
    rows = _covered(height, grid[1] * block[1])
    cols = _covered(width, grid[0] * block[0])
    return height, width, rows, cols


def conv2d_footprint(scalars: Scalars, grid: Dim3, block: Dim3) -> Footprint:
    """Input up to the covered block's lower-right neighbour; the weights of in-range taps."""
    height, width, rows, cols = _conv2d_extent(scalars, grid, block)
    if rows == 0 or cols == 0:
        return {"input": 0, "weights": 0, "output": 0}
    last_weight = 3 * (2 if height >= 2 else 1) + (2 if width >= 2 else 1)
    return {
        "input": min(rows, height - 1) * width + min(cols, width - 1) + 1,
        "weights": last_weight + 1,
        "output": (rows - 1) * width + cols,
    }


def conv2d(buffers: Buffers, scalars: Scalars, grid: Dim3, block: Dim3) -> None:
    """output[r, c] = the in-range taps fused-multiply-added in the kernel's order."""
    height, width, rows, cols = _conv2d_extent(scalars, grid, block)
    if rows == 0 or cols == 0:
        return
    image = _rows(buffers["input"], min(rows + 1, height), min(cols + 1, width), width)
    weights = buffers["weights"]
    acc = np.zeros((rows, cols), dtype=np.float32)
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            # Output pixels whose neighbour (r + dr, c + dc) lies inside the image.
            top, bottom = max(0, -dr), min(rows, height - dr)
            left, right = max(0, -dc), min(cols, width - dc)
            if top >= bottom or left >= right:
                continue
            tap = acc[top:bottom, left:right]
            neighbours = image[top + dr : bottom + dr, left + dc : right + dc]
            tap[...] = fma_f32(neighbours, weights[(dr + 1) * 3 + dc + 1], tap)
    _rows(buffers["output"], rows, cols, width)[...] = acc


# --- reduce_sum: *output += sum(input[:n]) ---------------------------------------------------


def reduce_sum_footprint(scalars: Scalars, grid: Dim3, block: Dim3) -> Footprint:
    """All n inputs (a grid-stride loop reaches them from any grid) and output[0]."""
    return {"input": max(0, int(scalars["n"])), "output": 1}


def reduce_sum(buffers: Buffers, scalars: Scalars, grid: Dim3, block: Dim3) -> None:
    """output[0] += input[0] + ... + input[n - 1] (summed in f64, added once)."""
    count = max(0, int(scalars["n"]))
    with np.errstate(all="ignore"):
        total = np.sum(buffers["input"][:count], dtype=np.float64)
        output = buffers["output"]
        output[0] = np.float32(np.float64(output[0]) + total)
