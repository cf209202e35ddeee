"""Group `gateway_processes`: one gateway process against two worker processes on one port
(TENSORWASM_GATEWAY_PROCESSES=2), both on PostgreSQL in front of the same executor and
store, secured as in production (a bearer token, the audit log to a file, rate limits on
and high enough not to reject).

Harness-timed (one sync client, one call at a time): Invoke `noop()` through each
(`gateway_processes/invoke_noop_1proc` is the anchor of `.../invoke_noop_2proc`).

Self-timed, in the params of `.../invoke_noop_2proc` (`throughput_64`): 64 concurrent
callers (grpc.aio, one client process) spread over 8 channels, each its own TCP
connection (the kernel spreads connections, not calls, among the workers), in
alternating blocks against each gateway, for Invoke `noop()` (gateway -> executor) and
for Invoke of a missing function (the gateway's work alone: auth, limit, lookup, audit);
calls/second, the 2-process / 1-process ratio of each, and the CPU time per call of each
gateway (supervisor and workers together, from /proc).

The ratio depends on the cores free for the workers: on a 2-core machine shared with the
client, the executor and the database, expect little or no gain.
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
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_client.client import GatewayClient
from tensorwasm_client.stack import LocalStack, ServiceProcess

from tests.bench.gateways import extra_gateway
from tests.bench.harness import Benchmark, RunConfig, group
from tests.engines.postgres import PostgresServer, postgres_bin_dir

NOOP_WAT = '(module (func (export "noop")))'
FUNCTION_ID = "bench-noop"
TENANT = "bench"
TOKEN = "bench-token-3a9d7c1e5b2f4086"
METADATA = (("authorization", f"Bearer {TOKEN}"), ("x-tensorwasm-tenant", TENANT))
CALL_TIMEOUT_SECONDS = 30.0
START_TIMEOUT_SECONDS = 120.0
CONCURRENT_CALLERS = 64
CHANNELS = 8
ONE = "gateway_processes/invoke_noop_1proc"
TWO = "gateway_processes/invoke_noop_2proc"
INVOKE = "/tensorwasm.gateway.v1.GatewayService/Invoke"


@contextlib.contextmanager
def _gateway(
    stack: LocalStack,
    services: dict[str, ServiceProcess],
    name: str,
    database_url: str,
    processes: int,
) -> Iterator[tuple[str, list[int]]]:
    """A gateway of `processes` processes; yields its address and its pids (the
    supervisor's and the workers', or the one process's)."""
    env = {
        "TENSORWASM_GATEWAY_PROCESSES": str(processes),
        "TENSORWASM_GATEWAY_TOKENS": f"{TOKEN}:tenant={TENANT}",
        "TENSORWASM_GATEWAY_AUDIT_LOG": f"file:{stack.data_dir / 'logs' / f'{name}.audit.jsonl'}",
        "TENSORWASM_GATEWAY_RATE_LIMIT_TENANT_QPS": "1000000",
        "TENSORWASM_GATEWAY_RATE_LIMIT_TENANT_BURST": "1000000",
    }
    with extra_gateway(
        stack,
        services,
        name,
        database_url,
        env=env,
        start_timeout_seconds=START_TIMEOUT_SECONDS,
    ) as (process, ready):
        pids = [process.pid, *(int(w["pid"]) for w in ready.get("workers", []))]
        yield str(ready["grpc_address"]), pids


async def _drive(address: str, request: bytes, calls: int, *, expect_ok: bool) -> float:
    """`calls` calls with CONCURRENT_CALLERS in flight over CHANNELS connections;
    returns the wall seconds."""
    options = [("grpc.use_local_subchannel_pool", 1)]  # a TCP connection per channel
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(CHANNELS)]
    try:
        methods: list[Any] = [channel.unary_unary(INVOKE) for channel in channels]
        remaining = calls

        async def one(method: Any) -> None:
            try:
                await method(request, metadata=METADATA, timeout=CALL_TIMEOUT_SECONDS)
            except grpc.aio.AioRpcError as exc:
                if expect_ok or exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise

        async def caller(index: int) -> None:
            nonlocal remaining
            method = methods[index % CHANNELS]
            while remaining > 0:
                remaining -= 1
                await one(method)

        await asyncio.gather(*(one(method) for method in methods))  # connect each
        started = time.perf_counter()
        await asyncio.gather(*(caller(index) for index in range(CONCURRENT_CALLERS)))
        return time.perf_counter() - started
    finally:
        for channel in channels:
            await channel.close()


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of the processes so far (Linux /proc), all threads."""
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _throughput(
    subjects: dict[str, tuple[Callable[[int], float], list[int]]], calls: int, blocks: int
) -> dict[str, Any]:
    """Calls/second and CPU µs per call of each subject over `blocks` alternating blocks
    of `calls` calls (after a warm-up block each)."""
    seconds = dict.fromkeys(subjects, 0.0)
    cpu = dict.fromkeys(subjects, 0.0)
    for run, _ in subjects.values():
        run(max(calls // 4, CONCURRENT_CALLERS))
    order = list(subjects.items())
    for index in range(blocks):
        shift = index % len(order)
        for name, (run, pids) in order[shift:] + order[:shift]:
            before = _cpu_seconds(pids)
            seconds[name] += run(calls)
            cpu[name] += _cpu_seconds(pids) - before
    return {
        "concurrent_callers": CONCURRENT_CALLERS,
        "channels": CHANNELS,
        "calls_per_block": calls,
        "blocks": blocks,
        "calls_per_second": {name: round(blocks * calls / s, 1) for name, s in seconds.items()},
        "gateway_cpu_us_per_call": {
            name: round(total / (blocks * calls) * 1e6) for name, total in cpu.items()
        },
    }


@group("gateway_processes")
def gateway_processes(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
    """Starts PostgreSQL, the stack, and a 1-process and a 2-process gateway before its
    executor and store; deploys `noop` on each; yields the two benchmarks."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed: run `make engines-postgres`")
    with contextlib.ExitStack() as cleanup:
        temp = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tensorwasm-bench-")))
        server = PostgresServer(bin_dir)
        cleanup.callback(server.remove)
        server.start()
        stack = LocalStack(
            temp / "stack",
            ephemeral_ports=True,
            extra_env={
                "OTEL_TRACES_EXPORTER": "none",
                "TENSORWASM_EXECUTOR_MAX_IN_FLIGHT": str(2 * CONCURRENT_CALLERS),
                "TENSORWASM_EXECUTOR_MAX_IN_FLIGHT_PER_TENANT": str(2 * CONCURRENT_CALLERS),
            },
        )
        cleanup.callback(stack.stop)
        services = stack.start()
        gateways = {
            name: cleanup.enter_context(
                _gateway(
                    stack, services, f"gateway-{processes}proc", server.create_database(), processes
                )
            )
            for name, processes in ((ONE, 1), (TWO, 2))
        }
        module = bytes(wasmtime.wat2wasm(NOOP_WAT))
        noop = pb.InvokeRequest(name=f"functions/{FUNCTION_ID}", export_name="noop")
        missing = pb.InvokeRequest(name="functions/absent", export_name="noop")
        calls = {}
        for name, (address, _) in gateways.items():
            with GatewayClient(address, tenant=TENANT, token=TOKEN) as client:
                client.create_function(FUNCTION_ID, module)
            stub = pb_grpc.GatewayServiceStub(cleanup.enter_context(grpc.insecure_channel(address)))
            reply = stub.Invoke(noop, metadata=METADATA, timeout=CALL_TIMEOUT_SECONDS)
            if reply.outcome.WhichOneof("result") != "success":
                raise RuntimeError(f"noop() failed on {name}: {reply.outcome}")
            calls[name] = functools.partial(
                stub.Invoke, noop, metadata=METADATA, timeout=CALL_TIMEOUT_SECONDS
            )

        def subject(name: str, request: pb.InvokeRequest, ok: bool) -> Callable[[int], float]:
            address = gateways[name][0]
            payload = request.SerializeToString()
            return lambda n: asyncio.run(_drive(address, payload, n, expect_ok=ok))

        throughput = _throughput(
            {
                "noop_1proc": (subject(ONE, noop, True), gateways[ONE][1]),
                "noop_2proc": (subject(TWO, noop, True), gateways[TWO][1]),
                "not_found_1proc": (subject(ONE, missing, False), gateways[ONE][1]),
                "not_found_2proc": (subject(TWO, missing, False), gateways[TWO][1]),
            },
            calls=640 if config.quick else 3200,
            blocks=4 if config.quick else 6,
        )
        rates = throughput["calls_per_second"]
        throughput["ratio_2proc_to_1proc"] = {
            "noop": round(rates["noop_2proc"] / rates["noop_1proc"], 3),
            "not_found": round(rates["not_found_2proc"] / rates["not_found_1proc"], 3),
        }
        throughput["cpu_count"] = len(os.sched_getaffinity(0))
        print(f"throughput at {CONCURRENT_CALLERS} callers over {CHANNELS} channels: {rates}")
        print(f"  2 processes / 1 process = {throughput['ratio_2proc_to_1proc']}")
        print(f"  gateway CPU µs per call: {throughput['gateway_cpu_us_per_call']}\n")
        params = {"request_bytes": noop.ByteSize()}
        yield [
            Benchmark(
                ONE,
                calls[ONE],
                description="Invoke noop() through a gateway of one process (PostgreSQL)",
                params=params,
            ),
            Benchmark(
                TWO,
                calls[TWO],
                anchors=(ONE,),
                description="the same through a gateway of two worker processes on one port",
                params={**params, "throughput_64": throughput},
            ),
        ]
