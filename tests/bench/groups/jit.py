"""Groups `jit_compile` and `jit_matmul`: PTX emission, the kernel cache, the tensor-op API.

- `jit_compile`: `emit_text/*` renders PTX in process (no cache); `cache/warm_hit` looks a
  kernel up in a warm `KernelCache` in process and, as `cache/warm_hit_grpc`, through the
  jit service's `EmitKernel` (a real process of the local stack); `cache/cold_miss_then_insert`
  is a fresh cache's first lookup (canonicalise, key, emit, insert). Anchor: the in-process
  warm hit.
- `jit_matmul`: C = A @ B for 256x256x256 f32 in a guest on the local stack (cpu backend):
  `tensor_op[256]` calls `tensorwasm:gpu` `matmul` (jit kernel, cached, run by the
  dispatcher, C written back into linear memory); `wasm_loop[256]` is the same guest's
  plain wasm triple loop, the anchor. Both through gateway -> executor. `offload[256]` is
  auto-offload: the `matmul` export of clients/guest/examples/cuda/offload_matmul.c (a plain
  C loop declared with `TENSORWASM_OFFLOAD`, built with clang-19) called on a live instance
  of a function deployed with `auto_offload`, against `offload_off[256]`, the same export
  on an instance deployed without it (the C loop, clang -O2). Slow per sample: run it with
  few samples (docs/PERFORMANCE.md has the command).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import wasmtime
from tensorwasm.common.v1 import values_pb2
from tensorwasm.gateway.v1 import gateway_service_pb2 as gw_pb
from tensorwasm.jit.v1 import jit_service_pb2 as jit_pb
from tensorwasm.jit.v1 import jit_service_pb2_grpc as jit_grpc
from tensorwasm_client.client import GatewayClient
from tensorwasm_client.stack import LocalStack
from tensorwasm_jit.kernel_cache import KernelCache
from tensorwasm_jit.ptx import KernelSpec, emit

from tests.bench.harness import Benchmark, RunConfig, group
from tests.guests import load_builder

GUEST = Path(__file__).resolve().parents[3] / "clients" / "guest" / "examples" / "jit_matmul.wat"
TIMEOUT_SECONDS = 60.0


def _stack(cleanup: contextlib.ExitStack) -> LocalStack:
    temp = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tensorwasm-bench-jit-"))
    # The tensor-op API's cost over a NumPy matmul, as before the PTX executor (a 256^3
    # matmul through it takes seconds; group ptx_cpu measures the executor).
    env = {"OTEL_TRACES_EXPORTER": "none", "TENSORWASM_DISPATCHER_CPU_KERNELS": "reference"}
    stack = LocalStack(Path(temp) / "stack", ephemeral_ports=True, extra_env=env)
    cleanup.callback(stack.stop)
    stack.start()
    return stack


@group("jit_compile")
def jit_compile(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
    """Emission in process, warm hits in process and over gRPC, a cold miss and insert."""
    specs = {
        "vector_add": KernelSpec("vector_add", {}, "f32", "sm_80"),
        "matmul[16x16x16]": KernelSpec("matmul", {"m": 16, "n": 16, "k": 16}, "f32", "sm_80"),
        "matmul[128x128x128]": KernelSpec("matmul", {"m": 128, "n": 128, "k": 128}, "f32", "sm_80"),
        "conv2d[3x3]": KernelSpec("conv2d", {"height": 64, "width": 64}, "f32", "sm_80"),
    }
    with contextlib.ExitStack() as cleanup:
        jit = cleanup.enter_context(_stack(cleanup).internal_channel("jit"))
        stub = jit_grpc.JitCacheServiceStub(jit)
        request = jit_pb.EmitKernelRequest(
            op="matmul", params={"m": 64, "n": 64, "k": 64}, target="sm_80"
        )
        stub.EmitKernel(request, timeout=TIMEOUT_SECONDS)
        warm = KernelCache()
        hot = KernelSpec("matmul", {"m": 64, "n": 64, "k": 64}, "f32", "sm_80")
        warm.get_or_emit(hot)
        anchor = "jit_compile/cache/warm_hit"

        def warm_hit_grpc() -> None:
            if not stub.EmitKernel(request, timeout=TIMEOUT_SECONDS).cache_hit:
                raise RuntimeError("the jit service missed a warm kernel")

        benchmarks = [
            Benchmark(anchor, lambda: warm.get_or_emit(hot), description="in-process LRU hit"),
            Benchmark(
                "jit_compile/cache/warm_hit_grpc",
                warm_hit_grpc,
                anchors=(anchor,),
                description="EmitKernel hit through the jit service (loopback gRPC)",
            ),
            Benchmark(
                "jit_compile/cache/cold_miss_then_insert",
                lambda: KernelCache().get_or_emit(hot),
                anchors=(anchor,),
                description="a fresh cache: canonicalise, key, emit, insert",
            ),
        ]
        for name, spec in specs.items():
            benchmarks.append(
                Benchmark(
                    f"jit_compile/emit_text/{name}",
                    lambda spec=spec: emit(spec),  # type: ignore[misc]
                    anchors=(anchor,),
                    params={"ptx_bytes": len(emit(spec).ptx)},
                )
            )
        yield benchmarks


@group("jit_matmul")
def jit_matmul(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
    """256x256x256 matmul: the `tensorwasm:gpu` tensor op against a guest-side wasm loop."""
    with contextlib.ExitStack() as cleanup:
        gateway = _stack(cleanup).services()["gateway"].grpc_address
        client = cleanup.enter_context(GatewayClient(gateway))
        client.create_function("jit-matmul", bytes(wasmtime.wat2wasm(GUEST.read_text())))

        def run(offload: int) -> None:
            args = [values_pb2.Value(i32=v) for v in (256, 256, 256, offload, 0)]
            outcome = client.invoke(
                "jit-matmul", "run", args, timeout_seconds=TIMEOUT_SECONDS
            ).outcome
            if outcome.WhichOneof("result") != "success" or outcome.success.results[0].i32:
                raise RuntimeError(f"matmul guest failed: {outcome}")

        anchor = "jit_matmul/wasm_loop[256]"
        benchmarks = [
            Benchmark(anchor, lambda: run(0), description="guest-side wasm triple loop"),
            Benchmark(
                "jit_matmul/tensor_op[256]",
                lambda: run(1),
                anchors=(anchor,),
                description="tensorwasm:gpu matmul: jit kernel on the dispatcher (cpu backend)",
            ),
        ]
        temp = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tw-offload-")))
        calls = _offload_calls(client, temp, cleanup)
        if calls is not None:
            on, off = calls
            benchmarks += [
                Benchmark(
                    "jit_matmul/offload_off[256]",
                    off,
                    anchors=(anchor,),
                    description="offload_matmul.c's `matmul`, deployed without auto_offload",
                ),
                Benchmark(
                    "jit_matmul/offload[256]",
                    on,
                    anchors=("jit_matmul/offload_off[256]", anchor),
                    description="the same export deployed with auto_offload (cpu backend)",
                ),
            ]
        yield benchmarks


def _offload_calls(
    client: GatewayClient, temp: Path, cleanup: contextlib.ExitStack
) -> tuple[Callable[[], None], Callable[[], None]] | None:
    """(on, off): a 256x256x256 call of offload_matmul.c's `matmul` export on a filled live
    instance of it deployed with and without auto_offload; None without clang."""
    builder = load_builder()
    clang = builder.find_clang()
    if clang is None:
        print("jit_matmul: no clang for wasm32-wasi; offload[256] skipped", file=sys.stderr)
        return None
    wasm = builder.build_c(builder.EXAMPLES / "offload_matmul.c", temp, clang).read_bytes()

    def ok(response: Any) -> list[int]:
        outcome = response.outcome
        if outcome.WhichOneof("result") != "success":
            raise RuntimeError(f"offload guest failed: {outcome}")
        return [value.i32 for value in outcome.success.results]

    def call(instance: str, export: str, *args: int) -> list[int]:
        values = [values_pb2.Value(i32=v) for v in args]
        return ok(client.call_instance(instance, export, values, timeout_seconds=TIMEOUT_SECONDS))

    def prepared(auto_offload: bool) -> Callable[[], None]:
        name = "offload-on" if auto_offload else "offload-off"
        client.create_function(name, wasm, gw_pb.FunctionConfig(auto_offload=auto_offload))
        instance = client.create_instance(name, timeout_seconds=TIMEOUT_SECONDS).instance.name
        cleanup.callback(client.delete_instance, instance)
        if call(instance, "fill", 256, 256, 256) != [0]:
            raise RuntimeError("fill refused 256x256x256")
        args = [call(instance, f"{x}_buffer")[0] for x in "abc"] + [256, 256, 256]

        def once() -> None:
            if call(instance, "matmul", *args) != [0]:
                raise RuntimeError("matmul did not return 0")

        once()
        if call(instance, "check", 256, 256, 256) != [0]:
            raise RuntimeError(f"{name}: wrong result")
        return once

    return prepared(True), prepared(False)
