"""Before/after of `e2e/invoke_noop` in one run: two secured stacks, one set of anchors.

`python -m tests.bench.e2e_ab --base REF` starts the stack of the `e2e` group twice: A
runs the services of git revision REF (a `git archive` of it, put first on their
PYTHONPATH), B the working tree's. With one pair of bare grpc.aio echo servers as anchors
it measures, in the harness's rotating interleaved blocks:

- a tail of sequential calls: the two-hop echo, the two-hop echo whose relay sends its
  calls as frames of one stream (the floor of a gateway that does), A's and B's
  `invoke_noop` (nearest-rank P50/P95/P99/P99.9, ratios against the two-hop echo, and B
  against A and the framed echo);
- 64 concurrent callers: the one-hop and two-hop echoes, A and B in rotating blocks
  (calls/second, ratios to both echoes: the two-hop echo is the floor of a relayed call)
  and the CPU time per invoke of each stack's gateway and executor (user + system, all
  threads, from /proc).

Only reports; both stacks run on this machine at once, so A and B see the same load.
Dependencies come from the working tree's environment for both (a revision that needs
other packages cannot be compared this way).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
import wasmtime
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_client.client import GatewayClient
from tensorwasm_client.stack import LocalStack

from tests.bench.echo_server import FULL_METHOD, running_echo_server
from tests.bench.groups import e2e
from tests.bench.harness import Benchmark
from tests.bench.selftimed import Tier, run_self_timed

ROOT = Path(__file__).resolve().parents[2]
# The source roots of the workspace packages (what the editable installs put on sys.path).
SOURCE_ROOTS = (
    "clients/python",
    "runtime_common",
    "services/dispatcher",
    "services/executor",
    "services/gateway",
    "services/jit",
    "services/snapshot",
    "kernels",
    "protos",
)
INVOKE = "/tensorwasm.gateway.v1.GatewayService/Invoke"


# The two-hop echo whose relay carries its calls as frames of one stream: the floor of a
# gateway that does (the anchor of the goal stays the plain two-hop echo).
ECHO_TWO_HOP_FRAMED = "grpcio/echo_two_hop_framed"


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.e2e_ab", description=__doc__)
    parser.add_argument("--base", required=True, help="git revision of stack A (e.g. HEAD~3)")
    parser.add_argument("--samples", type=int, default=3000, help="tail samples per subject")
    parser.add_argument("--calls", type=int, default=1600, help="calls per throughput block")
    parser.add_argument("--blocks", type=int, default=6, help="throughput blocks per subject")
    return parser.parse_args(argv)


def _export(revision: str, into: Path) -> str:
    """Extracts `revision`'s tree into `into`; returns the PYTHONPATH of its packages."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision],
        check=True,
        capture_output=True,
    ).stdout
    with tempfile.TemporaryFile() as buffer:
        buffer.write(archive)
        buffer.seek(0)
        with tarfile.open(fileobj=buffer) as tar:
            tar.extractall(into, filter="data")
    return ":".join(str(into / root) for root in SOURCE_ROOTS)


def _stack_env(data_dir: Path, label: str) -> dict[str, str]:
    """The `e2e` group's production-like settings."""
    return {
        "OTEL_TRACES_EXPORTER": "none",
        "TENSORWASM_GATEWAY_TOKENS": f"{e2e.TOKEN}:tenant={e2e.TENANT}",
        "TENSORWASM_GATEWAY_AUDIT_LOG": f"file:{data_dir / f'audit-{label}.jsonl'}",
        "TENSORWASM_GATEWAY_RATE_LIMIT_TENANT_QPS": "1000000",
        "TENSORWASM_GATEWAY_RATE_LIMIT_TENANT_BURST": "1000000",
        "TENSORWASM_EXECUTOR_MAX_IN_FLIGHT": str(2 * e2e.CONCURRENT_CALLERS),
        "TENSORWASM_EXECUTOR_MAX_IN_FLIGHT_PER_TENANT": str(2 * e2e.CONCURRENT_CALLERS),
    }


def _throughput(
    subjects: dict[str, Callable[[int], float]],
    pids: dict[str, dict[str, int]],
    calls: int,
    blocks: int,
) -> None:
    """Calls/second of each subject over `blocks` rotating blocks, and the CPU per call of
    the processes of the stacks (`pids`, by subject) during their own blocks."""
    seconds = dict.fromkeys(subjects, 0.0)
    cpu = {(label, name): 0.0 for label, procs in pids.items() for name in procs}
    for subject in subjects.values():
        subject(max(calls // 4, e2e.CONCURRENT_CALLERS))  # warm-up
    order = list(subjects)
    for index in range(blocks):
        for name in order[index % len(order) :] + order[: index % len(order)]:
            procs = pids.get(name, {})
            before = {proc: e2e._cpu_seconds(pid) for proc, pid in procs.items()}
            seconds[name] += subjects[name](calls)
            for proc, pid in procs.items():
                cpu[name, proc] += e2e._cpu_seconds(pid) - before[proc]
    rates = {name: blocks * calls / total for name, total in seconds.items()}
    echo, two_hop = rates[e2e.ECHO_UNARY], rates[e2e.ECHO_TWO_HOP]
    print(f"throughput at {e2e.CONCURRENT_CALLERS} callers ({blocks} blocks of {calls} calls):")
    for name, rate in rates.items():
        line = f"  {name}: {rate:.0f} calls/s, {rate / echo:.3f}x the one-hop echo"
        if name != e2e.ECHO_UNARY:
            line += f", {rate / two_hop:.3f}x the two-hop echo"
        if name in pids:
            per_call = {
                proc: round(cpu[name, proc] / (blocks * calls) * 1e6) for proc in pids[name]
            }
            line += f"; CPU µs per invoke {per_call}"
        print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the comparison and prints the tables."""
    args = _parse(sys.argv[1:] if argv is None else argv)
    with contextlib.ExitStack() as cleanup:
        data_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tw-e2e-ab-")))
        base_path = _export(args.base, data_dir / "base")
        gateways: dict[str, str] = {}
        pids: dict[str, dict[str, int]] = {}
        for label, extra in (("A", {"PYTHONPATH": base_path}), ("B", {})):
            env = {**_stack_env(data_dir, label), **extra}
            stack = LocalStack(data_dir / f"stack-{label}", ephemeral_ports=True, extra_env=env)
            cleanup.callback(stack.stop)
            services = stack.start()
            gateways[label] = services["gateway"].grpc_address
            pids[label] = {name: services[name].pid for name in ("gateway", "executor")}
            with GatewayClient(gateways[label], tenant=e2e.TENANT, token=e2e.TOKEN) as client:
                client.create_function(e2e.FUNCTION_ID, bytes(wasmtime.wat2wasm(e2e.NOOP_WAT)))
        leaf = cleanup.enter_context(running_echo_server(data_dir / "echo-leaf.log"))
        relay = cleanup.enter_context(
            running_echo_server(data_dir / "echo-relay.log", forward=leaf)
        )
        framed_relay = cleanup.enter_context(
            running_echo_server(data_dir / "echo-framed.log", forward=leaf, frames=True)
        )
        noop = pb.InvokeRequest(name=f"functions/{e2e.FUNCTION_ID}", export_name="noop")
        payload = b"\x5a" * noop.ByteSize()
        timeout = {"timeout": e2e.CALL_TIMEOUT_SECONDS}
        invokes = {}
        for label, address in gateways.items():
            stub = pb_grpc.GatewayServiceStub(cleanup.enter_context(grpc.insecure_channel(address)))
            invokes[label] = functools.partial(stub.Invoke, noop, metadata=e2e.METADATA, **timeout)
            if invokes[label]().outcome.WhichOneof("result") != "success":
                raise RuntimeError(f"noop() failed on stack {label}")
        two_hop = cleanup.enter_context(grpc.insecure_channel(relay)).unary_unary(FULL_METHOD)
        framed = cleanup.enter_context(grpc.insecure_channel(framed_relay)).unary_unary(FULL_METHOD)
        run_self_timed(
            "e2e A/B tail (A: --base, B: working tree)",
            [
                Benchmark(e2e.ECHO_TWO_HOP, functools.partial(two_hop, payload, **timeout)),
                Benchmark(
                    ECHO_TWO_HOP_FRAMED,
                    functools.partial(framed, payload, **timeout),
                    anchors=(e2e.ECHO_TWO_HOP,),
                ),
                Benchmark("A/invoke_noop", invokes["A"], anchors=(e2e.ECHO_TWO_HOP,)),
                Benchmark(
                    "B/invoke_noop",
                    invokes["B"],
                    anchors=(e2e.ECHO_TWO_HOP, "A/invoke_noop", ECHO_TWO_HOP_FRAMED),
                ),
            ],
            Tier(samples=args.samples, warmup=200, blocks=10),
        )
        request = noop.SerializeToString()

        def driver(
            address: str, method: str, body: bytes, metadata: object
        ) -> Callable[[int], float]:
            return lambda n: asyncio.run(e2e._drive(address, method, body, metadata, n))

        subjects = {
            e2e.ECHO_UNARY: driver(leaf, FULL_METHOD, payload, None),
            e2e.ECHO_TWO_HOP: driver(relay, FULL_METHOD, payload, None),
            "A": driver(gateways["A"], INVOKE, request, e2e.METADATA),
            "B": driver(gateways["B"], INVOKE, request, e2e.METADATA),
        }
        _throughput(subjects, pids, args.calls, args.blocks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
