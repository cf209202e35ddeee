"""Group `ptx_cpu`: the cpu backend's PTX executor against the NumPy references.

- Self-timed, per kernel of the kernel library (its canonical PTX, as nvcc wrote it):
  `ptx_cpu/<kernel>/executor` is one `CpuBackend.launch` through the PTX executor,
  anchored on `ptx_cpu/<kernel>/reference`, the same launch on a cpu backend that runs the
  library's NumPy reference (`cpu_kernels=reference`). Sizes: vector_add over 1M elements,
  the 16x16-tiled matmul at 256x256x256, reduce_sum over 1M elements (smoke: 64K, 64^3,
  64K). The ratio is what running PTX as written costs over NumPy's own kernel.
- Harness-timed: `ptx_cpu/translate/<module>` parses and translates one module in a fresh
  executor (what a first load costs), anchored on `ptx_cpu/translate/cache_hit`, a load of
  a module already translated (its BLAKE3 and a cache lookup). Smoke: three modules.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from tensorwasm_common.gpu_abi import ArgTag, ScalarArg
from tensorwasm_dispatcher.backends.base import BufferArg, Kernel, Stream
from tensorwasm_dispatcher.backends.cpu import CpuBackend, CpuKernels
from tensorwasm_dispatcher.backends.ptx import PtxExecutor
from tensorwasm_kernels import CATALOG

from tests.bench.harness import Benchmark, RunConfig, group
from tests.bench.selftimed import Tier, as_params, run_self_timed
from tests.ptx_kernels import ptx_text

FULL_TIER = Tier(samples=10, warmup=1, blocks=2)
QUICK_TIER = Tier(samples=3, warmup=1, blocks=1)
FULL_SIZES = {"vector_add": 1 << 20, "matmul": 256, "reduce_sum": 1 << 20}
QUICK_SIZES = {"vector_add": 1 << 16, "matmul": 64, "reduce_sum": 1 << 16}


class _Launch:
    """One kernel's launch, staged once on a backend and repeated."""

    def __init__(self, backend: CpuBackend, name: str, size: int) -> None:
        rng = np.random.default_rng(5)
        spec = CATALOG[name]
        self.backend = backend
        self.kernel: Kernel = backend.load(spec.ptx_text().encode(), spec.entry)
        self.stream: Stream = backend.open_stream()
        if name == "vector_add":
            arrays = [rng.standard_normal(size), rng.standard_normal(size), np.zeros(size)]
            scalars = [ScalarArg(ArgTag.U32, size)]
            self.grid, self.block = (-(-size // 256), 1, 1), (256, 1, 1)
        elif name == "matmul":
            arrays = [rng.standard_normal(size * size) for _ in range(2)] + [np.zeros(size**2)]
            scalars = [ScalarArg(ArgTag.I32, size)] * 3
            self.grid, self.block = (size // 16, size // 16, 1), (16, 16, 1)
        else:
            arrays = [rng.standard_normal(size), np.zeros(1)]
            scalars = [ScalarArg(ArgTag.U32, size)]
            self.grid, self.block = (64, 1, 1), (256, 1, 1)
        staged = [
            backend.stage(np.asarray(a, np.float32).tobytes(), self.stream, guest_offset=0)
            for a in arrays
        ]
        pointers = [
            BufferArg(buffer, 0, buffer.size_bytes, guest_offset=(i + 1) << 24)
            for i, buffer in enumerate(staged)
        ]
        self.args = [*pointers, *scalars]

    def __call__(self) -> None:
        self.backend.launch(self.stream, self.kernel, grid=self.grid, block=self.block,
                            shared_mem_bytes=0, args=self.args)  # fmt: skip


def _translation_benchmarks(quick: bool) -> list[Benchmark]:
    modules = {
        **{name: (CATALOG[name].ptx_text().encode(), CATALOG[name].entry) for name in CATALOG},
        "user-float_math": (ptx_text("float_math").encode(), "float_math"),
        "user-warp_reduce": (ptx_text("warp_reduce").encode(), "warp_reduce"),
    }
    if quick:  # smoke: one small, one large library module, one user module
        modules = {name: modules[name] for name in ("vector_add", "matmul", "user-warp_reduce")}
    warm = PtxExecutor()
    hot_ptx, hot_entry = modules["matmul"]
    warm.load(hot_ptx, hot_entry)
    anchor = "ptx_cpu/translate/cache_hit"
    benchmarks = [
        Benchmark(anchor, lambda: warm.load(hot_ptx, hot_entry),
                  description="load of a translated module: BLAKE3 + cache lookup"),
    ]  # fmt: skip
    for name, (ptx, entry) in modules.items():
        benchmarks.append(
            Benchmark(
                f"ptx_cpu/translate/{name}",
                lambda ptx=ptx, entry=entry: PtxExecutor().load(ptx, entry),  # type: ignore[misc]
                anchors=(anchor,),
                description="parse + translate in a fresh executor",
                params={"ptx_bytes": len(ptx)},
            )
        )
    return benchmarks


@group("ptx_cpu")
def ptx_cpu(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
    """The PTX executor against NumPy references, and translation against a cache hit."""
    tier = QUICK_TIER if config.quick else FULL_TIER
    sizes = QUICK_SIZES if config.quick else FULL_SIZES
    executor = CpuBackend(kernels=CpuKernels.PTX)
    reference = CpuBackend(kernels=CpuKernels.REFERENCE)
    self_timed: dict[str, Any] = {}
    for name, size in sizes.items():
        anchor = f"ptx_cpu/{name}/reference"
        launches = [
            Benchmark(anchor, _Launch(reference, name, size), params={"size": size}),
            Benchmark(f"ptx_cpu/{name}/executor", _Launch(executor, name, size),
                      anchors=(anchor,), params={"size": size}),
        ]  # fmt: skip
        results = run_self_timed(f"ptx_cpu [self-timed: {name}]", launches, tier)
        self_timed[name] = [as_params(result, tier) for result in results.values()]
    benchmarks = _translation_benchmarks(config.quick)
    first = benchmarks[0]
    yield [
        Benchmark(first.name, first.fn, description=first.description,
                  params={"self_timed": self_timed}),
        *benchmarks[1:],
    ]  # fmt: skip
