"""Group `isolation`: a light tenant's calls while another tenant floods the same executor.

One local stack on its default executor settings (the gateway's per-tenant rate limit is
raised, so that what is measured is the executor's isolation, not the gateway's rate
limiter). Tenant B calls `add` once at a time through the gateway; tenant A runs
FLOOD_CALLERS concurrent callers of a guest that runs until its 2 s deadline, each retrying
at once when refused (RESOURCE_EXHAUSTED): `spin` burns CPU, `flood` writes 4 KiB to
stdout in a loop. Three phases, in rotating blocks so that drift falls on all of them:

- `alone`: B with no flood (the anchor);
- `spinners`: B while A's callers spin;
- `output_flood`: B while A's callers flood their output.

A phase's flood starts before B's first call of the block (once one of A's guests has
written its first line, i.e. runs) and stops after B's last. Reported per phase: B's
success rate (an OK outcome with the right sum, within a 30 s RPC deadline) and the
nearest-rank P50/P95/P99/P99.9 of its latency, with the ratio of P50 and P99 to `alone`.
Goal (issue 14): success >= 99% and P99 <= 3x alone under both floods. Only reports.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_client.client import GatewayClient

from tests.bench.gateways import started_stack
from tests.bench.groups.executor import load_wat
from tests.bench.harness import Benchmark, RunConfig, group, summarize

FLOOD_CALLERS = 6
FLOOD_DEADLINE_SECONDS = 2.0
PHASES = ("alone", "spinners", "output_flood")
FLOOD_EXPORT = {"spinners": "spin", "output_flood": "flood"}
LIGHT, NOISY = "tenant-b", "tenant-a"
CALL_TIMEOUT_SECONDS = 30.0
START_TIMEOUT_SECONDS = 120.0
FUNCTION = "noisy"


class Flood:
    """FLOOD_CALLERS threads calling `export` of tenant A in a loop until stopped."""

    def __init__(self, gateway: str, export: str) -> None:
        self._gateway = gateway
        self._export = export
        self._stop = threading.Event()
        self.running = threading.Event()  # one of A's guests wrote its first line
        self.calls = 0
        self.refusals = 0
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._caller, daemon=True) for _ in range(FLOOD_CALLERS)
        ]

    def __enter__(self) -> Flood:
        for thread in self._threads:
            thread.start()
        if not self.running.wait(START_TIMEOUT_SECONDS):
            self.__exit__()
            raise RuntimeError(f"the flood's {self._export} guests never started")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(CALL_TIMEOUT_SECONDS)

    def _caller(self) -> None:
        with GatewayClient(self._gateway, tenant=NOISY) as client:
            while not self._stop.is_set():
                call = client.invoke_stream(
                    FUNCTION, self._export, timeout_seconds=FLOOD_DEADLINE_SECONDS
                )
                try:
                    for event in call:
                        if event.HasField("output"):
                            self.running.set()
                        if self._stop.is_set():
                            call.cancel()
                            break
                except Exception:  # refused (at capacity) or cancelled: retry at once
                    with self._lock:
                        self.refusals += 1
                with self._lock:
                    self.calls += 1


def _light_call(stub: pb_grpc.GatewayServiceStub) -> Callable[[], bool]:
    request = pb.InvokeRequest(
        name=f"functions/{FUNCTION}", export_name="add", args=[Value(i32=1), Value(i32=2)]
    )
    metadata = (("x-tensorwasm-tenant", LIGHT),)

    def call() -> bool:
        try:
            reply = stub.Invoke(request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.RpcError:
            return False
        return list(reply.outcome.success.results) == [Value(i32=3)]

    return call


def measure_phases(
    gateway: str, call: Callable[[], bool], *, per_block: int, blocks: int
) -> dict[str, dict[str, Any]]:
    """B's latencies (ns) and outcomes per phase, over rotating blocks."""
    latencies: dict[str, list[int]] = {phase: [] for phase in PHASES}
    failures = dict.fromkeys(PHASES, 0)
    flood_stats = {phase: {"calls": 0, "refusals": 0} for phase in FLOOD_EXPORT}
    for block in range(blocks):
        order = PHASES[block % len(PHASES) :] + PHASES[: block % len(PHASES)]
        for phase in order:
            flood = Flood(gateway, FLOOD_EXPORT[phase]) if phase in FLOOD_EXPORT else None
            with flood if flood is not None else contextlib.nullcontext():
                for _ in range(per_block):
                    started = time.perf_counter_ns()
                    ok = call()
                    elapsed = time.perf_counter_ns() - started
                    if ok:
                        latencies[phase].append(elapsed)
                    else:
                        failures[phase] += 1
            if flood is not None:
                flood_stats[phase]["calls"] += flood.calls
                flood_stats[phase]["refusals"] += flood.refusals
    report: dict[str, dict[str, Any]] = {}
    for phase in PHASES:
        total = len(latencies[phase]) + failures[phase]
        entry: dict[str, Any] = {
            "calls": total,
            "failures": failures[phase],
            "success_rate": round(len(latencies[phase]) / total, 4) if total else None,
        }
        if latencies[phase]:
            entry["latency"] = summarize(latencies[phase]).as_dict()
        if phase in flood_stats:
            entry["flood"] = flood_stats[phase]
        report[phase] = entry
    alone = report["alone"].get("latency")
    for phase in FLOOD_EXPORT:
        latency = report[phase].get("latency")
        if alone and latency:
            report[phase]["ratio_p50"] = round(latency["p50"] / alone["p50"], 2)
            report[phase]["ratio_p99"] = round(latency["p99"] / alone["p99"], 2)
    return report


def _print(report: dict[str, dict[str, Any]]) -> None:
    print("isolation: tenant B's add() while tenant A floods (latency in µs)")
    print(f"{'phase':<14}{'n':>6}{'ok %':>8}{'p50':>9}{'p95':>9}{'p99':>9}{'p99.9':>9}  vs alone")
    for phase, entry in report.items():
        latency = entry.get("latency", {})
        cells = [
            f"{latency.get(k, float('nan')) / 1e3:9.1f}" for k in ("p50", "p95", "p99", "p99_9")
        ]
        rate = entry["success_rate"]
        ratios = f"  {entry['ratio_p50']}x / {entry['ratio_p99']}x" if "ratio_p99" in entry else ""
        print(f"{phase:<14}{entry['calls']:>6}{100 * (rate or 0):>8.1f}{''.join(cells)}{ratios}")
    print()


@group("isolation")
def isolation(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
    """Starts a stack on default executor settings; measures the phases; yields B alone."""
    with contextlib.ExitStack() as cleanup:
        _, gateway = started_stack(cleanup)
        wasm = load_wat("noisy.wat")
        for tenant in (LIGHT, NOISY):
            with GatewayClient(gateway, tenant=tenant) as client:
                client.create_function(FUNCTION, wasm)
        channel = cleanup.enter_context(grpc.insecure_channel(gateway))
        call = _light_call(pb_grpc.GatewayServiceStub(channel))
        for _ in range(config.warmup):
            call()
        blocks = 2 if config.quick else 6
        per_block = 30 if config.quick else 100
        started = time.monotonic()
        report = measure_phases(gateway, call, per_block=per_block, blocks=blocks)
        _print(report)
        print(f"({time.monotonic() - started:.1f} s; phases stored in the params of the group)\n")
        yield [
            Benchmark(
                "isolation/b_alone",
                call,
                description="tenant B's add() through the gateway, no flood",
                params={
                    "phases": report,
                    "flood_callers": FLOOD_CALLERS,
                    "flood_deadline_seconds": FLOOD_DEADLINE_SECONDS,
                },
            )
        ]
