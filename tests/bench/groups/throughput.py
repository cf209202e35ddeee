"""Group `throughput`: one executor with 1, 2 and 4 workers under 8 concurrent clients.

Three local stacks (ephemeral ports) run side by side, one per worker count
(TENSORWASM_EXECUTOR_WORKERS), each with a CPU-bound guest deployed: `loop` from
guests/compute.wat, its iteration count calibrated so that one call spends ~5 ms in the guest
(by the executor's own guest_duration).

The throughput run is a self-timed tier: 8 client threads (one channel each) issue a fixed
number of calls in rotating blocks across the three stacks; it reports calls/second (calls over
the summed wall time of the blocks), the scaling against one worker, and per-call latency
percentiles under that concurrency. It is printed and stored in `params.throughput` of the
harness-timed benchmarks, which are the sequential floor of each stack: one client, one unary
Invoke of `add` at a time (worker-pool dispatch plus the gateway hop, no contention).
"""

from __future__ import annotations

import contextlib
import functools
import math
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from tensorwasm.common.v1 import values_pb2
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_client.client import GatewayClient
from tensorwasm_client.stack import LocalStack

from tests.bench.groups.executor import load_wat
from tests.bench.harness import Benchmark, RunConfig, group, summarize

WORKER_COUNTS = (1, 2, 4)
CLIENTS = 8
TARGET_GUEST_NS = 5_000_000
CALIBRATION_ITERATIONS = 1_000_000
FUNCTION_ID = "bench-compute"
CALL_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class LoadPlan:
    """Per worker count: `blocks` rotating blocks of CLIENTS x `calls` calls, after a warm-up."""

    blocks: int
    calls: int
    warmup_calls: int

    @property
    def total_calls(self) -> int:
        """Timed calls per worker count."""
        return self.blocks * self.calls * CLIENTS


LOAD_PLAN = LoadPlan(blocks=5, calls=10, warmup_calls=2)
LOAD_PLAN_QUICK = LoadPlan(blocks=2, calls=4, warmup_calls=1)


def _invoke_request(export: str, *args: values_pb2.Value) -> pb.InvokeRequest:
    return pb.InvokeRequest(name=f"functions/{FUNCTION_ID}", export_name=export, args=args)


def _checked(response: pb.InvokeResponse) -> pb.InvokeResponse:
    if response.outcome.WhichOneof("result") != "success":
        raise RuntimeError(f"the guest failed: {response.outcome}")
    return response


def _two_significant(value: float) -> int:
    digits = max(0, math.floor(math.log10(value)) - 1)
    return int(round(value, -digits))


@dataclass
class LoadStats:
    """What the clients saw on one stack, accumulated over the blocks."""

    workers: int
    wall_ns: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    guest_ns: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """calls/second, latency percentiles (ns) and guest time, for the JSON."""
        latency = summarize(self.latencies_ns).as_dict()
        return {
            "workers": self.workers,
            "clients": CLIENTS,
            "calls": len(self.latencies_ns),
            "wall_seconds": self.wall_ns / 1e9,
            "calls_per_second": len(self.latencies_ns) / (self.wall_ns / 1e9),
            "latency": latency,
            "guest_p50_ns": summarize(self.guest_ns).p50,
        }


class StackLoad:
    """CLIENTS threads, each with its own channel to one stack's gateway."""

    def __init__(self, address: str, workers: int, pool: ThreadPoolExecutor) -> None:
        self.workers = workers
        self._pool = pool
        self._channels = [grpc.insecure_channel(address) for _ in range(CLIENTS)]
        self._stubs = [pb_grpc.GatewayServiceStub(c) for c in self._channels]

    def stub(self) -> pb_grpc.GatewayServiceStub:
        """The first client's stub (for calls outside the load)."""
        return self._stubs[0]

    def close(self) -> None:
        """Closes the client channels."""
        for channel in self._channels:
            channel.close()

    def _client(
        self, stub: pb_grpc.GatewayServiceStub, request: pb.InvokeRequest, calls: int
    ) -> tuple[list[int], list[int]]:
        latencies, guest = [], []
        for _ in range(calls):
            start = time.perf_counter_ns()
            response = stub.Invoke(request, timeout=CALL_TIMEOUT_SECONDS)
            latencies.append(time.perf_counter_ns() - start)
            guest.append(_checked(response).outcome.guest_duration.ToNanoseconds())
        return latencies, guest

    def block(self, request: pb.InvokeRequest, calls: int, into: LoadStats | None) -> None:
        """Every client issues `calls` calls back to back; all clients run at once."""
        start = time.perf_counter_ns()
        futures = [self._pool.submit(self._client, s, request, calls) for s in self._stubs]
        done = [f.result() for f in futures]
        wall = time.perf_counter_ns() - start
        if into is not None:
            into.wall_ns += wall
            for latencies, guest in done:
                into.latencies_ns += latencies
                into.guest_ns += guest


def _table(stats: Sequence[LoadStats], title: str) -> str:
    rows: list[tuple[str, ...]] = [
        ("workers", "calls", "wall s", "calls/s", "scaling", "p50 ms", "p95 ms", "p99 ms")
    ]
    base = stats[0].as_dict()["calls_per_second"]
    for item in stats:
        data = item.as_dict()
        lat = data["latency"]
        rows.append(
            (
                str(item.workers),
                str(data["calls"]),
                f"{data['wall_seconds']:.2f}",
                f"{data['calls_per_second']:.1f}",
                f"{data['calls_per_second'] / base:.2f}x",
                *(f"{lat[p] / 1e6:.2f}" for p in ("p50", "p95", "p99")),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [title] + ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


@group("throughput")
def throughput(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
    """Starts one stack per worker count, measures 8-client throughput, yields the floors."""
    wasm = load_wat("compute.wat")
    plan = LOAD_PLAN_QUICK if config.quick else LOAD_PLAN
    with contextlib.ExitStack() as cleanup:
        temp = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tw-bench-")))
        pool = cleanup.enter_context(ThreadPoolExecutor(CLIENTS, thread_name_prefix="client"))
        stacks = {
            workers: LocalStack(
                temp / f"stack-w{workers}",
                ephemeral_ports=True,
                extra_env={
                    "OTEL_TRACES_EXPORTER": "none",
                    "TENSORWASM_EXECUTOR_WORKERS": str(workers),
                    # Admit every client (the default, 2x workers and half that per tenant,
                    # would refuse most of them): the worker pool is measured, not admission.
                    "TENSORWASM_EXECUTOR_MAX_IN_FLIGHT": str(CLIENTS),
                    "TENSORWASM_EXECUTOR_MAX_IN_FLIGHT_PER_TENANT": str(CLIENTS),
                },
            )
            for workers in WORKER_COUNTS
        }
        for stack in stacks.values():
            cleanup.callback(stack.stop)
        # Started side by side: each start is mostly interpreter start-up and imports.
        with ThreadPoolExecutor(len(stacks)) as starter:
            running = dict(zip(stacks, starter.map(LocalStack.start, stacks.values()), strict=True))
        loads: list[StackLoad] = []
        for workers, services in running.items():
            gateway = services["gateway"].grpc_address
            with GatewayClient(gateway) as client:
                client.create_function(FUNCTION_ID, wasm)
            load = StackLoad(gateway, workers, pool)
            cleanup.callback(load.close)
            loads.append(load)

        # ~5 ms of guest time per call, by the executor's own guest_duration (best of 5).
        probe = _invoke_request("loop", values_pb2.Value(i64=CALIBRATION_ITERATIONS))
        stub = loads[0].stub()
        best = min(
            _checked(
                stub.Invoke(probe, timeout=CALL_TIMEOUT_SECONDS)
            ).outcome.guest_duration.ToNanoseconds()
            for _ in range(5)
        )
        iterations = _two_significant(CALIBRATION_ITERATIONS * TARGET_GUEST_NS / best)
        spin = _invoke_request("loop", values_pb2.Value(i64=iterations))

        for load in loads:  # warm-up: channels, worker threads, module caches
            load.block(spin, plan.warmup_calls, None)
        stats = {load.workers: LoadStats(load.workers) for load in loads}
        started = time.monotonic()
        for index in range(plan.blocks):
            shift = index % len(loads)
            for load in [*loads[shift:], *loads[:shift]]:
                load.block(spin, plan.calls, stats[load.workers])
        guest_ms = summarize(stats[1].guest_ns).p50 / 1e6
        title = (
            f"throughput [self-timed: {CLIENTS} clients, {plan.total_calls} calls per"
            f" worker count in {plan.blocks} rotating blocks; loop({iterations}),"
            f" guest p50 {guest_ms:.2f} ms at 1 worker; latency per call]"
        )
        print(_table(list(stats.values()), title))
        print(f"({time.monotonic() - started:.1f} s; stored in params.throughput)\n")

        add = _invoke_request("add", values_pb2.Value(i32=1), values_pb2.Value(i32=2))
        first = f"gateway/invoke_add/workers={WORKER_COUNTS[0]}"
        benchmarks = []
        for load in loads:
            name = f"gateway/invoke_add/workers={load.workers}"
            call = load.stub().Invoke
            if [v.i32 for v in _checked(call(add)).outcome.success.results] != [3]:
                raise RuntimeError("add(1, 2) did not return 3")
            benchmarks.append(
                Benchmark(
                    name,
                    functools.partial(call, add, timeout=CALL_TIMEOUT_SECONDS),
                    anchors=() if name == first else (first,),
                    description=(
                        "sequential unary Invoke add(1, 2), one client; "
                        "8-client throughput of the ~5 ms guest in params.throughput"
                    ),
                    params={
                        "workers": load.workers,
                        "throughput": {
                            **stats[load.workers].as_dict(),
                            "loop_iterations": iterations,
                            "scaling_vs_1_worker": stats[load.workers].as_dict()["calls_per_second"]
                            / stats[1].as_dict()["calls_per_second"],
                        },
                    },
                )
            )
        yield benchmarks
