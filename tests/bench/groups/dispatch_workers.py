"""Group `dispatch_workers`: what a worker process per tenant costs (issue 20), on the cpu
backend here (the GPU figure when a device is lent: the same group, `backend=cuda`).

One batch = load vector_add + N launches over f32[256] (three staged buffers), run:

- `dispatch/workers/inprocess/<N>`: `Dispatcher.execute` in this process (isolation off);
- `dispatch/workers/worker/<N>`: `WorkerPool.execute`, the batch run by the tenant's
  warm worker process (pickled over a pipe both ways);
- anchor `dispatch/workers/anchor/raw/<N>`: N direct `CpuBackend.launch` calls.

Self-timed (few samples), stored in the params:

- `dispatch/workers/cold_start`: a new tenant's first one-launch batch (spawn the worker,
  import, open the backend, run), anchored on the same batch in a warm worker;
- `dispatch/workers/neighbour_crashloop/1`: a warm tenant's one-launch batch while another
  tenant's worker is killed (SIGKILL) and restarted in a loop, and `dispatch/workers/quiet/1`
  the same batch after the loop stopped; their ratio (p50, p99) is in the params (the two
  cannot share a tier: the loop runs for the whole of one).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from tensorwasm_common.gpu_abi import ArgTag, BufferRef, ScalarArg
from tensorwasm_common.gpu_batch import Batch, LaunchKernel, LoadKernel, StagedRegion
from tensorwasm_dispatcher.accounting import Ledger
from tensorwasm_dispatcher.backends.cpu import CpuBackend, CpuKernels
from tensorwasm_dispatcher.batch_runner import Dispatcher
from tensorwasm_dispatcher.gpu_sessions import GpuSessionTable
from tensorwasm_dispatcher.settings import DispatcherSettings
from tensorwasm_dispatcher.workers import WorkerPool
from tensorwasm_kernels import CATALOG

from tests.bench.groups.dispatch import ELEMENTS, CpuDirect
from tests.bench.harness import Benchmark, RunConfig, group
from tests.bench.selftimed import Reported, Tier, as_params, run_self_timed

SIZES = (1, 100)
COLD_TIER = Tier(samples=6, warmup=1, blocks=2)
CRASH_TIER = Tier(samples=1000, warmup=5, blocks=4)
PACE_SECONDS = 0.01
QUICK_COLD_TIER = Tier(samples=2, warmup=0, blocks=1)
QUICK_CRASH_TIER = Tier(samples=300, warmup=1, blocks=2)


def batch(session: str, launches: int) -> Batch:
    data = np.ones(ELEMENTS, np.float32).tobytes()
    regions = tuple(StagedRegion(i, data, 4096 * (i + 1), i == 2) for i in range(3))
    args = (
        *(BufferRef(i, 0, 4 * ELEMENTS) for i in range(3)),
        ScalarArg(ArgTag.I32, ELEMENTS),
    )
    spec = CATALOG["vector_add"]
    launch = LaunchKernel(0, (1, 1, 1), (ELEMENTS, 1, 1), 0, args)
    load = LoadKernel(0, spec.ptx_text().encode("utf-8"), spec.entry)
    return Batch(session, regions, (load, *([launch] * launches)), True)


def _check(result: Any) -> None:
    if any(command.code for command in result.results):
        raise RuntimeError(f"the batch failed: {result.results[:2]}")


class CrashLoop:
    """Kills another tenant's worker and restarts it (one tiny batch) until stopped."""

    def __init__(self, pool: WorkerPool, tenant: str) -> None:
        self._pool, self._tenant = pool, tenant
        self._stop = threading.Event()
        self._crashed = threading.Event()
        self.crashes = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._pool.execute(self._tenant, batch("crash", 1))
            pid = self._pool.workers().get(self._tenant)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    self.crashes += 1
                    self._crashed.set()

    def __enter__(self) -> CrashLoop:
        self._thread.start()
        if not self._crashed.wait(timeout=120):
            raise RuntimeError("the neighbour's worker never started")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@group("dispatch_workers")
def dispatch_workers(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
    # The workers' cost, not the kernel's: NumPy references, as in `dispatch` (group
    # ptx_cpu measures the PTX executor).
    settings = DispatcherSettings(
        backend="cpu", worker_isolation="tenant", max_workers=64, cpu_kernels="reference"
    )
    backend = CpuBackend(kernels=CpuKernels.REFERENCE)
    ledger = Ledger(1 << 30)
    inprocess = Dispatcher(backend, ledger, GpuSessionTable(backend, idle_ttl_seconds=600))
    pool = WorkerPool(settings, Ledger(1 << 30))
    raw = CpuDirect()
    try:
        batches = {n: batch(f"s{n}", n) for n in SIZES}
        _check(pool.execute("warm", batches[1]))  # the warm tenant's worker is up

        def run_in_process(n: int) -> None:
            _check(inprocess.execute("warm", batches[n]))

        def run_in_worker(n: int) -> None:
            _check(pool.execute("warm", batches[n]))

        tenants = iter(range(1 << 30))

        def paced(n: int) -> Reported:
            """One batch after a 10 ms pause: the tier spans several of the neighbour's
            crash cycles (each a worker cold start, about 2 s here)."""
            time.sleep(PACE_SECONDS)
            started = time.perf_counter_ns()
            run_in_worker(n)
            return Reported(time.perf_counter_ns() - started)

        def cold() -> None:
            _check(pool.execute(f"cold-{next(tenants)}", batches[1]))

        cold_tier = QUICK_COLD_TIER if config.quick else COLD_TIER
        cold_results = run_self_timed(
            "dispatch_workers [self-timed: cold start]",
            [
                Benchmark(
                    "dispatch/workers/cold_start",
                    cold,
                    anchors=("dispatch/workers/warm/1",),
                    description="a new tenant's first batch: spawn, import, open the backend",
                ),
                Benchmark("dispatch/workers/warm/1", functools.partial(run_in_worker, 1)),
            ],
            cold_tier,
        )
        crash_tier = QUICK_CRASH_TIER if config.quick else CRASH_TIER
        with CrashLoop(pool, "crashing") as loop:
            crash_results = run_self_timed(
                "dispatch_workers [self-timed: a neighbour crash-looping]",
                [
                    Benchmark(
                        "dispatch/workers/neighbour_crashloop/1",
                        functools.partial(paced, 1),
                        description="a warm tenant's batch while another's worker crash-loops "
                        "(ratio to dispatch/workers/quiet/1 in the params)",
                    )
                ],
                crash_tier,
            )
            crashes = loop.crashes
        quiet = run_self_timed(
            "dispatch_workers [self-timed: quiet]",
            [Benchmark("dispatch/workers/quiet/1", functools.partial(paced, 1))],
            crash_tier,
        )
        self_timed = {
            name: as_params(result, tier)
            for results, tier in (
                (cold_results, cold_tier),
                (crash_results, crash_tier),
                (quiet, crash_tier),
            )
            for name, result in results.items()
        }
        crashing = crash_results["dispatch/workers/neighbour_crashloop/1"].summary
        calm = quiet["dispatch/workers/quiet/1"].summary
        self_timed["neighbour_crashloop_vs_quiet"] = {
            "crashes": crashes,
            "ratio_p50": crashing.p50 / calm.p50,
            "ratio_p99": crashing.p99 / calm.p99,
        }
        print(
            f"neighbour crash-looping ({crashes} crashes): p50 {crashing.p50 / calm.p50:.2f}x, "
            f"p99 {crashing.p99 / calm.p99:.2f}x quiet\n"
        )
        benchmarks: list[Benchmark] = []
        for n in SIZES:
            anchor = f"dispatch/workers/anchor/raw/{n}"
            benchmarks += [
                Benchmark(
                    f"dispatch/workers/inprocess/{n}",
                    functools.partial(run_in_process, n),
                    anchors=(anchor,),
                    description=f"load + {n} launch(es) via Dispatcher.execute in process",
                    params={"self_timed": self_timed} if n == SIZES[0] else {},
                ),
                Benchmark(
                    f"dispatch/workers/worker/{n}",
                    functools.partial(run_in_worker, n),
                    anchors=(anchor, f"dispatch/workers/inprocess/{n}"),
                    description=f"load + {n} launch(es) in the tenant's worker process",
                ),
                Benchmark(
                    anchor,
                    functools.partial(raw.launches, n),
                    description=f"{n} direct CpuBackend.launch calls",
                ),
            ]
        yield benchmarks
    finally:
        pool.close()
