"""The PTX executor of the cpu backend: runs any PTX of the ISA subset that nvcc and the jit
cache emit, vectorised over threads with NumPy.

`parser` reads PTX text; `operands` (registers, immediates, addresses), `common`,
`arithmetic` (with `integer_ops`), `moves` (setp, selp, mov, cvt) and `memory_ops` (loads,
stores, atomics, shuffles, votes) translate instructions into NumPy operations; `program`
groups them into basic blocks and schedules threads;
`state` holds registers and memories; `executor` loads (with a cache keyed by the PTX's
BLAKE3) and launches.
"""

from tensorwasm_dispatcher.backends.ptx.executor import (
    MAX_SHARED_BYTES_PER_BLOCK,
    ExecutorStats,
    PointerArg,
    PtxExecutor,
    PtxKernel,
)

__all__ = [
    "MAX_SHARED_BYTES_PER_BLOCK",
    "ExecutorStats",
    "PointerArg",
    "PtxExecutor",
    "PtxKernel",
]
