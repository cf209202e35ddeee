"""Group `memory_bandwidth`: guest linear memory <-> a device buffer, against a host memcpy
of the same bytes in the same run.

A live instance of `guests/memory.wat` holds one device buffer (`tensorwasm:gpu`
`tw_gpu_buffer_alloc`) of the largest size; each sample is one CallInstance through
gateway -> executor, whose guest call moves N bytes:

- `memory_bandwidth/h2d/<N>`: `tw_gpu_buffer_write` of linear memory [0, N) then
  `wasi_cuda_sync` (the executor reads the bytes out of linear memory, the batch carries
  them to the dispatcher, which writes them into the device buffer);
- `memory_bandwidth/d2h/<N>`: `tw_gpu_buffer_read` of the buffer's first N bytes into
  linear memory (one round trip: the dispatcher reads the buffer, the executor writes
  linear memory).

Anchors: `host/memcpy/<N>` (`ctypes.memmove` of N bytes between two preallocated buffers
in this process: the bytes' floor) and `memory_bandwidth/call_floor` (CallInstance of the
same instance's `noop`: the call's floor, moving nothing). `mb_per_second_p50` is stored in
each self-timed entry.

N = 64 KiB is timed by the harness; 1 MiB and 16 MiB (1 MiB only with --quick) are
self-timed (30 samples each: every sample moves megabytes through three processes) and
stored in the params of `memory_bandwidth/h2d/64KiB`.

The dispatcher is the stack's default: the cpu backend, where a device buffer is host
memory in the dispatcher's process; on a CUDA device it would be device memory and the
copies `cuMemcpyHtoD`/`DtoH` (not measured here: no device).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import wasmtime
from tensorwasm.common.v1 import values_pb2
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_client.client import GatewayClient
from tensorwasm_client.stack import LocalStack

from tests.bench.harness import Benchmark, RunConfig, group
from tests.bench.selftimed import Tier, as_params, run_self_timed

GUEST = Path(__file__).resolve().parent.parent / "guests" / "memory.wat"
FUNCTION_ID = "bench-memory"
CALL_TIMEOUT_SECONDS = 120.0
KIB, MIB = 1 << 10, 1 << 20
HARNESS_SIZE = 64 * KIB
SELF_TIMED_SIZES, SELF_TIMED_SIZES_QUICK = (1 * MIB, 16 * MIB), (1 * MIB,)
BULK_TIER = Tier(samples=30, warmup=3, blocks=3)
CALL_FLOOR = "memory_bandwidth/call_floor"


def _label(size: int) -> str:
    return f"{size // MIB}MiB" if size >= MIB else f"{size // KIB}KiB"


def _call(stub: pb_grpc.GatewayServiceStub, instance: str, export: str, *args: int) -> None:
    """CallInstance of `export(*args)`; raises unless the guest returned 0."""
    request = pb.CallInstanceRequest(
        name=instance, export_name=export, args=[values_pb2.Value(i32=a) for a in args]
    )
    outcome = stub.CallInstance(request, timeout=CALL_TIMEOUT_SECONDS).outcome
    if outcome.WhichOneof("result") != "success" or [v.i32 for v in outcome.success.results] != [0]:
        raise RuntimeError(f"{export}{args} did not return 0: {outcome}")


def _memcpy(size: int) -> Callable[[], None]:
    """`ctypes.memmove` (libc memcpy semantics, no overlap here) of `size` bytes."""
    source = (ctypes.c_char * size).from_buffer(bytearray(b"\x5a" * size))
    target = (ctypes.c_char * size).from_buffer(bytearray(size))
    return functools.partial(ctypes.memmove, target, source, size)


def _pair(call: Callable[..., None], size: int) -> tuple[Benchmark, Benchmark, Benchmark]:
    """The memcpy anchor and the two directions at one size."""
    label = _label(size)
    anchors = (f"host/memcpy/{label}", CALL_FLOOR)
    return (
        Benchmark(
            f"host/memcpy/{label}",
            _memcpy(size),
            description=f"ctypes.memmove of {size} bytes in process: the bytes' floor",
            params={"bytes": size},
        ),
        Benchmark(
            f"memory_bandwidth/h2d/{label}",
            functools.partial(call, "h2d", size),
            anchors=anchors,
            description="CallInstance: tw_gpu_buffer_write of linear memory + wasi_cuda_sync",
            params={"bytes": size},
        ),
        Benchmark(
            f"memory_bandwidth/d2h/{label}",
            functools.partial(call, "d2h", size),
            anchors=anchors,
            description="CallInstance: tw_gpu_buffer_read of the device buffer into memory",
            params={"bytes": size},
        ),
    )


@group("memory_bandwidth")
def memory_bandwidth(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
    """Starts the stack, creates the instance and its device buffer, measures."""
    sizes = SELF_TIMED_SIZES_QUICK if config.quick else SELF_TIMED_SIZES
    with contextlib.ExitStack() as cleanup:
        data_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tw-bench-")))
        stack = LocalStack(
            data_dir / "stack", ephemeral_ports=True, extra_env={"OTEL_TRACES_EXPORTER": "none"}
        )
        cleanup.callback(stack.stop)
        gateway = stack.start()["gateway"].grpc_address
        client = cleanup.enter_context(GatewayClient(gateway))
        client.create_function(FUNCTION_ID, bytes(wasmtime.wat2wasm(GUEST.read_text())))
        created = client.create_instance(FUNCTION_ID, idle_ttl_seconds=3600)
        if not created.HasField("instance"):
            raise RuntimeError(f"the instance did not start: {created.outcome}")
        instance = created.instance.name
        cleanup.callback(client.delete_instance, instance)

        stub = pb_grpc.GatewayServiceStub(cleanup.enter_context(grpc.insecure_channel(gateway)))
        call = functools.partial(_call, stub, instance)
        call("setup", max(sizes))
        for size in (HARNESS_SIZE, *sizes):  # each path works before anything is timed
            call("h2d", size)
            call("d2h", size)
        floor = Benchmark(
            CALL_FLOOR,
            functools.partial(call, "noop"),
            description="CallInstance of noop() on the same instance: the call's floor",
        )

        tiers: dict[str, dict[str, Any]] = {}
        for size in sizes:
            results = run_self_timed(
                f"memory_bandwidth [self-timed: {_label(size)}]",
                [floor, *_pair(call, size)],
                BULK_TIER,
            )
            tier = tiers[_label(size)] = {}
            for name, result in results.items():
                entry = tier[name] = as_params(result, BULK_TIER)
                if name != CALL_FLOOR:
                    entry["mb_per_second_p50"] = round(size / 1e6 / (result.summary.p50 / 1e9), 1)
                    print(f"{name}: {entry['mb_per_second_p50']} MB/s at P50")
            print()

        memcpy, h2d, d2h = _pair(call, HARNESS_SIZE)
        h2d = dataclasses.replace(h2d, params={**h2d.params, "self_timed": tiers})
        yield [floor, memcpy, h2d, d2h]
