"""Group `e2e`: the secured gateway (auth + audit on) against bare grpcio floors, same run.

Harness-timed (one sync client, one call at a time):
- `grpcio/echo_unary`: bare grpc.aio echo server, one hop (the floor of a gateway-only call);
- `grpcio/echo_two_hop`: echo relayed once (the floor of gateway -> executor);
- `e2e/healthz`: grpc.health.v1 Check on the gateway (anchor: one hop);
- `e2e/invoke_not_found`: Invoke of a function that does not exist: bearer auth, tenant scope,
  rate limit, registry lookup, NOT_FOUND with ErrorInfo, audit record (anchor: one hop);
- `e2e/invoke_noop`: Invoke of `noop()` through gateway -> executor (anchor: two hops).

Self-timed, stored in the params of `e2e/invoke_noop`:
- `tail`: 10,000 samples (1,000 with --quick) of invoke_noop and of the two-hop echo, for
  nearest-rank P50/P95/P99/P99.9 with enough samples behind the P99.9;
- `throughput_64`: 64 concurrent callers (grpc.aio, one process) against the one-hop echo,
  the two-hop echo (the floor of a relayed call) and invoke_noop, in rotating blocks;
  calls/second and the ratios, and the CPU time per invoke_noop of the gateway and
  executor processes (from /proc, all threads).

The gateway runs as in production: a bearer token scoped to one tenant, the audit log
written to a file (one write per record), rate limits on (set high enough not to reject).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import wasmtime
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_client.client import GatewayClient
from tensorwasm_client.stack import LocalStack

from tests.bench.echo_server import FULL_METHOD, running_echo_server
from tests.bench.harness import Benchmark, RunConfig, group
from tests.bench.selftimed import Tier, as_params, run_self_timed

NOOP_WAT = '(module (func (export "noop")))'
FUNCTION_ID = "bench-noop"
TENANT = "bench"
TOKEN = "bench-token-6f1c2a9e4b7d8053"
CALL_TIMEOUT_SECONDS = 30.0
ECHO_UNARY = "grpcio/echo_unary"
ECHO_TWO_HOP = "grpcio/echo_two_hop"
HEALTHZ = "e2e/healthz"
NOT_FOUND = "e2e/invoke_not_found"
NOOP = "e2e/invoke_noop"
CONCURRENT_CALLERS = 64
TAIL_SAMPLES = 10_000
METADATA = (("authorization", f"Bearer {TOKEN}"), ("x-tensorwasm-tenant", TENANT))


def _not_found(stub: pb_grpc.GatewayServiceStub, request: pb.InvokeRequest) -> None:
    try:
        stub.Invoke(request, metadata=METADATA, timeout=CALL_TIMEOUT_SECONDS)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return
    raise RuntimeError("Invoke of a missing function succeeded")


async def _drive(address: str, method: str, payload: bytes, metadata: Any, calls: int) -> float:
    """`calls` calls with CONCURRENT_CALLERS in flight; returns the wall seconds."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary(method)
        remaining = calls

        async def caller() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await call(payload, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)

        await call(payload, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)  # connect
        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(CONCURRENT_CALLERS)))
        return time.perf_counter() - started


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _throughput(
    subjects: dict[str, Callable[[int], float]],
    calls: int,
    blocks: int,
    *,
    cpu_of: str,
    pids: dict[str, int],
) -> dict[str, Any]:
    """Calls/second of each subject over `blocks` rotating blocks of `calls` calls, and
    the CPU time per call that the processes in `pids` spent on the `cpu_of` subject's
    blocks (less sensitive than rates to other work on a shared machine)."""
    seconds = dict.fromkeys(subjects, 0.0)
    cpu = dict.fromkeys(pids, 0.0)
    for subject in subjects.values():
        subject(max(calls // 4, CONCURRENT_CALLERS))  # warm-up
    for index in range(blocks):
        order = list(subjects.items())
        for name, subject in order[index % len(order) :] + order[: index % len(order)]:
            before = {process: _cpu_seconds(pid) for process, pid in pids.items()}
            seconds[name] += subject(calls)
            if name == cpu_of:
                for process, pid in pids.items():
                    cpu[process] += _cpu_seconds(pid) - before[process]
    rates = {name: blocks * calls / total for name, total in seconds.items()}
    return {
        "concurrent_callers": CONCURRENT_CALLERS,
        "calls_per_block": calls,
        "blocks": blocks,
        "calls_per_second": {name: round(rate, 1) for name, rate in rates.items()},
        f"cpu_us_per_call[{cpu_of}]": {
            process: round(total / (blocks * calls) * 1e6) for process, total in cpu.items()
        },
    }


@group("e2e")
def e2e(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
    """Starts the secured stack and two echo servers, yields the five benchmarks."""
    with contextlib.ExitStack() as cleanup:
        data_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tw-bench-")))
        stack = LocalStack(
            data_dir / "stack",
            ephemeral_ports=True,
            extra_env={
                "OTEL_TRACES_EXPORTER": "none",
                "TENSORWASM_GATEWAY_TOKENS": f"{TOKEN}:tenant={TENANT}",
                "TENSORWASM_GATEWAY_AUDIT_LOG": f"file:{data_dir / 'audit.jsonl'}",
                "TENSORWASM_GATEWAY_RATE_LIMIT_TENANT_QPS": "1000000",
                "TENSORWASM_GATEWAY_RATE_LIMIT_TENANT_BURST": "1000000",
                # 64 callers at once: let the executor queue them rather than shed them.
                "TENSORWASM_EXECUTOR_MAX_IN_FLIGHT": str(2 * CONCURRENT_CALLERS),
                "TENSORWASM_EXECUTOR_MAX_IN_FLIGHT_PER_TENANT": str(2 * CONCURRENT_CALLERS),
            },
        )
        cleanup.callback(stack.stop)
        services = stack.start()
        gateway = services["gateway"].grpc_address
        service_pids = {name: services[name].pid for name in ("gateway", "executor")}
        leaf = cleanup.enter_context(running_echo_server(data_dir / "echo-leaf.log"))
        relay = cleanup.enter_context(
            running_echo_server(data_dir / "echo-relay.log", forward=leaf)
        )
        with GatewayClient(gateway, tenant=TENANT, token=TOKEN) as client:
            client.create_function(FUNCTION_ID, bytes(wasmtime.wat2wasm(NOOP_WAT)))

        channel = cleanup.enter_context(grpc.insecure_channel(gateway))
        stub = pb_grpc.GatewayServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        noop = pb.InvokeRequest(name=f"functions/{FUNCTION_ID}", export_name="noop")
        missing = pb.InvokeRequest(name="functions/absent", export_name="noop")
        reply = stub.Invoke(noop, metadata=METADATA, timeout=CALL_TIMEOUT_SECONDS)
        if reply.outcome.WhichOneof("result") != "success":
            raise RuntimeError(f"noop() failed: {reply.outcome}")
        _not_found(stub, missing)

        payload = b"\x5a" * noop.ByteSize()
        echo = cleanup.enter_context(grpc.insecure_channel(leaf)).unary_unary(FULL_METHOD)
        two_hop = cleanup.enter_context(grpc.insecure_channel(relay)).unary_unary(FULL_METHOD)
        timeout = {"timeout": CALL_TIMEOUT_SECONDS}
        echo_call = functools.partial(echo, payload, **timeout)
        two_hop_call = functools.partial(two_hop, payload, **timeout)
        noop_call = functools.partial(stub.Invoke, noop, metadata=METADATA, **timeout)
        health_call = functools.partial(health.Check, health_pb2.HealthCheckRequest(), **timeout)

        tail_tier = Tier(
            samples=1000 if config.quick else TAIL_SAMPLES,
            warmup=config.warmup,
            blocks=config.blocks,
        )
        tail = run_self_timed(
            "e2e tail (self-timed)",
            [
                Benchmark(ECHO_TWO_HOP, two_hop_call),
                Benchmark(NOOP, noop_call, anchors=(ECHO_TWO_HOP,)),
            ],
            tail_tier,
        )
        noop_bytes = noop.SerializeToString()
        method = "/tensorwasm.gateway.v1.GatewayService/Invoke"
        throughput = _throughput(
            {
                ECHO_UNARY: lambda n: asyncio.run(_drive(leaf, FULL_METHOD, payload, None, n)),
                ECHO_TWO_HOP: lambda n: asyncio.run(_drive(relay, FULL_METHOD, payload, None, n)),
                NOOP: lambda n: asyncio.run(_drive(gateway, method, noop_bytes, METADATA, n)),
            },
            calls=640 if config.quick else 3200,
            blocks=4 if config.quick else 6,
            cpu_of=NOOP,
            pids=service_pids,
        )
        rates = throughput["calls_per_second"]
        throughput["ratio_to_echo"] = round(rates[NOOP] / rates[ECHO_UNARY], 3)
        # The floor of a relayed call on this machine: what the goal's ratio can reach.
        throughput["two_hop_echo_ratio_to_echo"] = round(rates[ECHO_TWO_HOP] / rates[ECHO_UNARY], 3)
        throughput["ratio_to_two_hop_echo"] = round(rates[NOOP] / rates[ECHO_TWO_HOP], 3)
        print(f"throughput at {CONCURRENT_CALLERS} callers (calls/s): {rates}")
        print(
            f"  invoke_noop / one-hop echo = {throughput['ratio_to_echo']}"
            f" (two-hop echo / one-hop echo = {throughput['two_hop_echo_ratio_to_echo']};"
            f" invoke_noop / two-hop echo = {throughput['ratio_to_two_hop_echo']})"
        )
        print(f"  CPU µs per invoke_noop: {throughput[f'cpu_us_per_call[{NOOP}]']}\n")
        noop_params: dict[str, Any] = {
            "tail": {name: as_params(result, tail_tier) for name, result in tail.items()},
            "throughput_64": throughput,
        }
        for entry in noop_params["tail"].values():
            entry.pop("samples", None)  # 10,000 raw samples do not belong in the params
        sizes = {"request_bytes": len(payload)}
        yield [
            Benchmark(
                ECHO_UNARY, echo_call, description="bare grpc.aio echo, one hop", params=sizes
            ),
            Benchmark(
                ECHO_TWO_HOP,
                two_hop_call,
                anchors=(ECHO_UNARY,),
                description="bare grpc.aio echo relay -> echo: the two-hop floor",
                params=sizes,
            ),
            Benchmark(
                HEALTHZ,
                health_call,
                anchors=(ECHO_UNARY,),
                description="grpc.health.v1 Check on the gateway",
            ),
            Benchmark(
                NOT_FOUND,
                functools.partial(_not_found, stub, missing),
                anchors=(ECHO_UNARY, ECHO_TWO_HOP),
                description="Invoke of a missing function: auth, scope, limit, lookup, audit",
            ),
            Benchmark(
                NOOP,
                noop_call,
                anchors=(ECHO_TWO_HOP, ECHO_UNARY),
                description="Invoke noop() via gateway -> executor, auth + audit on",
                params=noop_params,
            ),
        ]
