"""Group `small_calls`: a workload of many small calls of live instances, 24 modules with
one live instance each, through the gateway (CallInstance) against the same calls made in
this process on wasmtime-py (issue 21: "about 14,000 calls over 24 modules ... about 45x
longer through the gateway than the same calls in process").

Each module is `add(a, b) = a + b + K` with its own K (so 24 digests, 24 compiled modules);
every call goes to the next instance in turn. Harness-timed, one call a sample:

- `wasmtime/func_call`: `Func.__call__(store, a, b)` of one of the 24 instances in this
  process (the anchor: the call with nothing around it);
- `grpcio/echo_two_hop`: the bare grpc.aio echo relayed once, with a payload of the
  CallInstance request's size (the floor of any relayed call);
- `small_calls/call_instance`: CallInstance of `add(a, b)` through gateway -> executor,
  its result checked.

Self-timed, stored in the params of `small_calls/call_instance` (`workload`): the whole
workload, WORKLOAD_CALLS calls (1,400 with --quick) made one after another, both ways, in
BLOCKS interleaved blocks; the total seconds each way and their ratio (the issue's 45x).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import wasmtime
from tensorwasm.common.v1 import values_pb2
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_client.client import GatewayClient

from tests.bench.echo_server import FULL_METHOD, running_echo_server
from tests.bench.gateways import started_stack
from tests.bench.harness import Benchmark, RunConfig, group

MODULES = 24
WORKLOAD_CALLS, WORKLOAD_CALLS_QUICK = 14_000, 1_400
BLOCKS = 4
CALL_TIMEOUT_SECONDS = 30.0
TENANT = "bench-small-calls"
ARGS = (20, 22)
FUNC_CALL = "wasmtime/func_call"
ECHO_TWO_HOP = "grpcio/echo_two_hop"
CALL_INSTANCE = "small_calls/call_instance"


def module_wat(constant: int) -> str:
    return (
        '(module (func (export "add") (param i32 i32) (result i32)'
        f" (i32.add (i32.add (local.get 0) (local.get 1)) (i32.const {constant}))))"
    )


def _in_process() -> Callable[[], None]:
    """One `Func.__call__` a call, on the next of MODULES instances in this process."""
    engine = wasmtime.Engine()
    calls = []
    for constant in range(MODULES):
        store = wasmtime.Store(engine)
        instance = wasmtime.Instance(store, wasmtime.Module(engine, module_wat(constant)), [])
        add = instance.exports(store)["add"]
        assert isinstance(add, wasmtime.Func)
        if add(store, *ARGS) != sum(ARGS) + constant:
            raise RuntimeError(f"module {constant}: add returned the wrong sum")
        calls.append(functools.partial(add, store, *ARGS))
    turn = itertools.cycle(calls)

    def call() -> None:
        next(turn)()

    return call


def _through_gateway(
    stub: pb_grpc.GatewayServiceStub, instances: Sequence[tuple[str, int]]
) -> Callable[[], None]:
    """One CallInstance a call, on the next live instance; raises on a wrong result."""
    args = [values_pb2.Value(i32=a) for a in ARGS]
    requests = [
        (pb.CallInstanceRequest(name=name, export_name="add", args=args), sum(ARGS) + constant)
        for name, constant in instances
    ]
    turn = itertools.cycle(requests)
    metadata = (("x-tensorwasm-tenant", TENANT),)

    def call() -> None:
        request, expected = next(turn)
        outcome = stub.CallInstance(
            request, metadata=metadata, timeout=CALL_TIMEOUT_SECONDS
        ).outcome
        if outcome.WhichOneof("result") != "success" or outcome.success.results[0].i32 != expected:
            raise RuntimeError(f"CallInstance of {request.name} failed: {outcome}")

    return call


def _workload(calls: int, ways: dict[str, Callable[[], None]]) -> dict[str, Any]:
    """The whole workload each way, `calls` calls one after another, in BLOCKS blocks
    interleaved between the ways; the total seconds each way and the ratio."""
    totals = dict.fromkeys(ways, 0.0)
    per_block = max(1, calls // BLOCKS)
    for block in range(BLOCKS):
        order = list(ways.items())
        for name, call in order[block % len(order) :] + order[: block % len(order)]:
            started = time.perf_counter()
            for _ in range(per_block):
                call()
            totals[name] += time.perf_counter() - started
    done = per_block * BLOCKS
    return {
        "calls": done,
        "modules": MODULES,
        "seconds": {name: round(total, 4) for name, total in totals.items()},
        "gateway_vs_in_process": round(totals[CALL_INSTANCE] / totals[FUNC_CALL], 1),
    }


@group("small_calls")
def small_calls(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
    """Starts the stack, deploys the 24 modules and one live instance each, measures."""
    with contextlib.ExitStack() as cleanup:
        data_dir, gateway = started_stack(cleanup)  # one tenant's calls, never throttled
        client = cleanup.enter_context(GatewayClient(gateway, tenant=TENANT))
        instances = []
        for constant in range(MODULES):
            function_id = f"small-{constant}"
            client.create_function(function_id, bytes(wasmtime.wat2wasm(module_wat(constant))))
            created = client.create_instance(function_id, idle_ttl_seconds=3600)
            if not created.HasField("instance"):
                raise RuntimeError(f"instance of {function_id} did not start: {created.outcome}")
            instances.append((created.instance.name, constant))
            cleanup.callback(client.delete_instance, created.instance.name)

        stub = pb_grpc.GatewayServiceStub(cleanup.enter_context(grpc.insecure_channel(gateway)))
        through_gateway = _through_gateway(stub, instances)
        in_process = _in_process()
        for _ in range(2 * MODULES):  # every instance answers before anything is timed
            through_gateway()
        leaf = cleanup.enter_context(running_echo_server(data_dir / "echo-leaf.log"))
        relay = cleanup.enter_context(
            running_echo_server(data_dir / "echo-relay.log", forward=leaf)
        )
        two_hops = cleanup.enter_context(grpc.insecure_channel(relay)).unary_unary(FULL_METHOD)
        payload = (
            b"Z"
            * pb.CallInstanceRequest(
                name=instances[0][0],
                export_name="add",
                args=[values_pb2.Value(i32=a) for a in ARGS],
            ).ByteSize()
        )

        calls = WORKLOAD_CALLS_QUICK if config.quick else WORKLOAD_CALLS
        workload = _workload(calls, {FUNC_CALL: in_process, CALL_INSTANCE: through_gateway})
        print(
            f"small_calls workload: {workload['calls']} calls over {MODULES} modules, "
            f"{workload['seconds']}; through the gateway {workload['gateway_vs_in_process']}x "
            "in process"
        )
        yield [
            Benchmark(
                FUNC_CALL,
                in_process,
                description=f"Func.__call__ of add on one of {MODULES} instances, in process",
            ),
            Benchmark(
                ECHO_TWO_HOP,
                functools.partial(two_hops, payload, timeout=CALL_TIMEOUT_SECONDS),
                description="bare grpc.aio echo relayed once: the floor of a relayed call",
                params={"payload_bytes": len(payload)},
            ),
            Benchmark(
                CALL_INSTANCE,
                through_gateway,
                anchors=(FUNC_CALL, ECHO_TWO_HOP),
                description=f"CallInstance of add on one of {MODULES} live instances, in turn",
                params={"workload": workload},
            ),
        ]
