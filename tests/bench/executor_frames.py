"""The executor alone: `Invoke(noop)` as a unary RPC against the same call as a frame of
its `Calls` stream (what the gateway sends), with the bare one-hop grpc.aio echo as anchor.

`python -m tests.bench.executor_frames` starts the stack of the `e2e` group, then one
grpc.aio client calls the executor directly (with the fleet's service token), one call
after another, in rotating interleaved blocks; it prints nearest-rank P50/P95/P99/P99.9
of each and their ratios to the echo. Only reports (docs/PERFORMANCE.md, "Short calls as
frames of one stream").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import blake3
import grpc
import wasmtime
from tensorwasm.executor.v1 import executor_service_pb2 as pb
from tensorwasm_client.client import GatewayClient
from tensorwasm_client.stack import LocalStack

from tests.bench.echo_server import FULL_METHOD, running_echo_server
from tests.bench.groups import e2e
from tests.bench.harness import summarize

SERVICE = "/tensorwasm.executor.v1.ExecutorService"
TOKEN_KEY = "x-tensorwasm-service-token"
ECHO = "grpcio/echo_unary"


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.executor_frames", description=__doc__
    )
    parser.add_argument("--samples", type=int, default=3000, help="samples per subject")
    parser.add_argument("--blocks", type=int, default=10, help="rotating blocks")
    return parser.parse_args(argv)


async def _measure(
    subjects: dict[str, Callable[[], Awaitable[None]]], samples: int, blocks: int
) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in subjects}
    for call in subjects.values():
        for _ in range(300):  # warm-up
            await call()
    order = list(subjects)
    for index in range(blocks):
        for name in order[index % len(order) :] + order[: index % len(order)]:
            call = subjects[name]
            for _ in range(samples // blocks):
                started = time.perf_counter_ns()
                await call()
                times[name].append((time.perf_counter_ns() - started) / 1000)
    return times


async def _run(executor: str, token: str, leaf: str, digest: str, args: argparse.Namespace) -> None:
    metadata = ((TOKEN_KEY, token),)
    request = pb.InvokeRequest(module_digest=digest, export_name="noop", tenant=e2e.TENANT)
    payload = request.SerializeToString()
    async with (
        grpc.aio.insecure_channel(executor) as channel,
        grpc.aio.insecure_channel(leaf) as echo_channel,
    ):
        unary = channel.unary_unary(
            f"{SERVICE}/Invoke",
            request_serializer=pb.InvokeRequest.SerializeToString,
            response_deserializer=pb.InvokeResponse.FromString,
        )
        stream = channel.stream_stream(
            f"{SERVICE}/Calls",
            request_serializer=pb.CallsRequest.SerializeToString,
            response_deserializer=pb.CallsResponse.FromString,
        )(metadata=metadata)
        if (await stream.read()).call_id != 0:
            raise RuntimeError("the Calls stream did not open")
        echo = echo_channel.unary_unary(FULL_METHOD)
        ids = itertools.count(1)

        async def framed() -> None:
            frame = pb.CallsRequest(call_id=next(ids), invoke=request)
            frame.timeout.seconds = int(e2e.CALL_TIMEOUT_SECONDS)
            await stream.write(frame)
            if (await stream.read()).WhichOneof("result") != "invoke":
                raise RuntimeError("noop() failed as a frame")

        async def direct() -> None:
            await unary(request, metadata=metadata, timeout=e2e.CALL_TIMEOUT_SECONDS)

        async def bare() -> None:
            await echo(payload, timeout=e2e.CALL_TIMEOUT_SECONDS)

        subjects = {ECHO: bare, "executor/invoke_unary": direct, "executor/invoke_frame": framed}
        times = await _measure(subjects, args.samples, args.blocks)
        stream.cancel()
    anchor = summarize(times[ECHO])
    print(
        f"{'name':24} {'n':>6} {'p50':>8} {'p95':>8} {'p99':>8} {'p99.9':>8}  vs {ECHO} (p50 / p99)"
    )
    for name, samples in times.items():
        summary = summarize(samples)
        line = (
            f"{name:24} {len(samples):6d} {summary.p50:8.1f} {summary.p95:8.1f} "
            f"{summary.p99:8.1f} {summary.p99_9:8.1f}"
        )
        if name != ECHO:
            line += f"  {summary.p50 / anchor.p50:.2f}x / {summary.p99 / anchor.p99:.2f}x"
        print(line)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the comparison and prints the table (µs)."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    wasm = bytes(wasmtime.wat2wasm(e2e.NOOP_WAT))
    with contextlib.ExitStack() as cleanup:
        data_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tw-frames-")))
        env = {
            "OTEL_TRACES_EXPORTER": "none",
            "TENSORWASM_GATEWAY_TOKENS": f"{e2e.TOKEN}:tenant={e2e.TENANT}",
        }
        stack = LocalStack(data_dir / "stack", ephemeral_ports=True, extra_env=env)
        cleanup.callback(stack.stop)
        services = stack.start()
        with GatewayClient(
            services["gateway"].grpc_address, tenant=e2e.TENANT, token=e2e.TOKEN
        ) as client:
            client.create_function(e2e.FUNCTION_ID, wasm)  # puts the module in the store
        leaf = cleanup.enter_context(running_echo_server(data_dir / "echo-leaf.log"))
        asyncio.run(
            _run(
                services["executor"].grpc_address,
                stack.service_token(),
                leaf,
                blake3.blake3(wasm).hexdigest(),
                args,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
