"""Launch geometry: grid and block dimensions, checked against CUDA's launch limits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

from tensorwasm_kernels.errors import LaunchGeometryError

Dim3: TypeAlias = tuple[int, int, int]

# Limits of every device from compute capability 7.0 on (CUDA programming guide, table
# "Technical Specifications per Compute Capability"); cuLaunchKernel rejects anything else.
MAX_BLOCK_THREADS = 1024
MAX_BLOCK_DIM: Dim3 = (1024, 1024, 64)
MAX_GRID_DIM: Dim3 = (2**31 - 1, 65535, 65535)


def _dim3(value: Sequence[int], what: str, limits: Dim3) -> Dim3:
    if len(value) != 3:
        raise LaunchGeometryError(f"{what} must have 3 dimensions, got {len(value)}")
    for axis, (size, limit) in enumerate(zip(value, limits, strict=True)):
        if isinstance(size, bool) or not isinstance(size, int):
            raise LaunchGeometryError(f"{what}[{axis}] must be an int, got {type(size).__name__}")
        if not 1 <= size <= limit:
            raise LaunchGeometryError(f"{what}[{axis}] = {size} is outside [1, {limit}]")
    return (value[0], value[1], value[2])


def check_geometry(grid: Sequence[int], block: Sequence[int]) -> tuple[Dim3, Dim3]:
    """Checks a launch's grid and block against CUDA's limits.

    Args:
        grid: Blocks per grid along x, y, z.
        block: Threads per block along x, y, z.

    Returns:
        The grid and block as int 3-tuples.

    Raises:
        LaunchGeometryError: A dimension is not an int, is below 1 or above its limit, or
            the block has more than `MAX_BLOCK_THREADS` threads.
    """
    checked_grid = _dim3(grid, "grid", MAX_GRID_DIM)
    checked_block = _dim3(block, "block", MAX_BLOCK_DIM)
    threads = checked_block[0] * checked_block[1] * checked_block[2]
    if threads > MAX_BLOCK_THREADS:
        raise LaunchGeometryError(
            f"block {checked_block} has {threads} threads, more than {MAX_BLOCK_THREADS}"
        )
    return checked_grid, checked_block
