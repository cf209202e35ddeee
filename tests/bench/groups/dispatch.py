"""Group `dispatch`: the GPU path's overhead per kernel launch, guest to dispatcher and back.

A guest call `launches(N)` loads vector_add, queues N launches over f32[256] (three staged
pointer arguments), syncs once: gateway -> executor (`wasi:cuda` host functions, batching)
-> dispatcher (fair scheduler, staging, the backend) -> back. Sizes N = 1, 10, 100, 1000:

- `dispatch/serial/<N>`: one call at a time.
- `dispatch/concurrent_cap64/<N>`: waves of 64 concurrent calls (the dispatcher's default
  in-flight cap), one sample per wave.

Anchors in the same run: `dispatch/anchor/cpu/<N>` (N direct `CpuBackend.launch` calls of
the same kernel, grid and arguments, in process: the cpu backend's own cost) and, where a
CUDA device answers, `dispatch/anchor/cuda/<N>` (a raw cuda-python `cuLaunchKernel` loop of
the same kernel, grid and args, then one stream sync). The concurrent sizes are anchored on
64 x N direct launches. So every ratio is a per-launch ratio. N = 1 and 10 serial are timed
by the harness; the larger sizes are self-timed (few samples) and stored in the params.

Where a CUDA device answers, the two ways the cuda backend loads a module are compared
too: `dispatch/module_load/cubin` (`cuModuleLoadData` of the cubin `cuLink` made of the PTX
once, what cubin sharing loads) against its anchor `dispatch/module_load/ptx`
(`cuModuleLoadData` of the PTX, JIT-compiled by the driver at each load; its on-disk
compute cache may serve repeats unless `CUDA_CACHE_DISABLE=1`), each load then unloaded.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import functools
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import wasmtime
from tensorwasm.common.v1 import values_pb2
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_client.client import GatewayClient
from tensorwasm_client.stack import LocalStack
from tensorwasm_common.gpu_abi import ArgTag, ScalarArg
from tensorwasm_dispatcher.backends.base import BufferArg
from tensorwasm_dispatcher.backends.cpu import CpuBackend, CpuKernels
from tensorwasm_dispatcher.backends.discovery import BackendKind, discover
from tensorwasm_kernels import CATALOG

from tests.bench.harness import Benchmark, RunConfig, group
from tests.bench.selftimed import Tier, as_params, run_self_timed

GUEST = Path(__file__).resolve().parent.parent / "guests" / "dispatch.wat.in"
FUNCTION_ID = "bench-dispatch"
ELEMENTS = 256
SIZES = (1, 10, 100, 1000)
HARNESS_SIZES = (1, 10)
CONCURRENCY = 64
CALL_TIMEOUT_SECONDS = 300.0
SERIAL_TIER = Tier(samples=20, warmup=2, blocks=4)
CONCURRENT_TIER = Tier(samples=4, warmup=1, blocks=2)
QUICK_TIER = Tier(samples=3, warmup=1, blocks=1)


def _wat_string(data: bytes) -> str:
    safe = set(range(0x20, 0x7F)) - {ord('"'), ord("\\")}
    return "".join(chr(b) if b in safe else f"\\{b:02x}" for b in data)


def guest_module() -> bytes:
    """The benchmark guest with the canonical vector_add PTX."""
    ptx = CATALOG["vector_add"].ptx_text().encode("utf-8")
    text = GUEST.read_text().replace("{{PTX}}", _wat_string(ptx))
    return bytes(wasmtime.wat2wasm(text.replace("{{PTX_LEN}}", str(len(ptx)))))


class CpuDirect:
    """N launches of vector_add straight on a `CpuBackend` (no RPC, no guest)."""

    def __init__(self) -> None:
        self._backend = CpuBackend(kernels=CpuKernels.REFERENCE)
        self._stream = self._backend.open_stream()
        ptx = CATALOG["vector_add"].ptx_text().encode("utf-8")
        self._kernel = self._backend.load(ptx, "vector_add")
        ones = np.ones(ELEMENTS, np.float32).tobytes()
        buffers = [self._backend.stage(ones, self._stream) for _ in range(3)]
        self._args = [BufferArg(b, 0, 4 * ELEMENTS, 4096 * i) for i, b in enumerate(buffers)]
        self._args.append(ScalarArg(ArgTag.U32, ELEMENTS))  # type: ignore[arg-type]

    def launches(self, count: int) -> None:
        launch, stream, kernel, args = (
            self._backend.launch, self._stream, self._kernel, self._args,
        )  # fmt: skip
        for _ in range(count):
            launch(stream, kernel, grid=(1, 1, 1), block=(ELEMENTS, 1, 1), shared_mem_bytes=0,
                   args=args)  # fmt: skip


class RawCuda:
    """The raw cuda-python floor: cuLaunchKernel of vector_add in a loop, one sync."""

    def __init__(self) -> None:
        from cuda.bindings import driver

        self._driver = driver
        check = self._check
        check(driver.cuInit(0))
        (device,) = check(driver.cuDeviceGet(0))
        (self._context,) = check(driver.cuDevicePrimaryCtxRetain(device))
        check(driver.cuCtxSetCurrent(self._context))
        ptx = CATALOG["vector_add"].ptx_text().encode("utf-8") + b"\0"
        self._image = ctypes.create_string_buffer(ptx, len(ptx))
        (module,) = check(driver.cuModuleLoadData(ctypes.addressof(self._image)))
        (self._function,) = check(driver.cuModuleGetFunction(module, b"vector_add"))
        (self._stream,) = check(driver.cuStreamCreate(0))
        self._pointers = [check(driver.cuMemAlloc(4 * ELEMENTS))[0] for _ in range(3)]
        self._slots: list[Any] = [ctypes.c_uint64(int(p)) for p in self._pointers]
        self._slots.append(ctypes.c_uint32(ELEMENTS))
        self._params = (ctypes.c_void_p * 4)(*[ctypes.addressof(s) for s in self._slots])
        self._cubin = self._link(ptx)

    def _link(self, ptx: bytes) -> Any:
        """The cubin the driver's linker makes of `ptx` (what cubin sharing stores)."""
        driver, check = self._driver, self._check
        (state,) = check(driver.cuLinkCreate(0, [], []))
        try:
            check(driver.cuLinkAddData(
                state, driver.CUjitInputType.CU_JIT_INPUT_PTX, ctypes.addressof(self._image),
                len(ptx), b"vector_add.ptx", 0, [], [],
            ))  # fmt: skip
            cubin, size = check(driver.cuLinkComplete(state))
            return ctypes.create_string_buffer(ctypes.string_at(int(cubin), int(size)))
        finally:
            check(driver.cuLinkDestroy(state))

    def _load_unload(self, image: Any) -> None:
        driver, check = self._driver, self._check
        check(driver.cuCtxSetCurrent(self._context))
        (module,) = check(driver.cuModuleLoadData(ctypes.addressof(image)))
        check(driver.cuModuleUnload(module))

    def load_ptx(self) -> None:
        """Loads (JIT-compiles) the PTX and unloads it."""
        self._load_unload(self._image)

    def load_cubin(self) -> None:
        """Loads the linked cubin and unloads it."""
        self._load_unload(self._cubin)

    @staticmethod
    def _check(result: Any) -> tuple[Any, ...]:
        status, *values = result if isinstance(result, tuple) else (result,)
        if int(status) != 0:
            raise RuntimeError(f"CUDA call failed: {status}")
        return tuple(values)

    def launches(self, count: int) -> None:
        driver, check = self._driver, self._check
        check(driver.cuCtxSetCurrent(self._context))
        params = ctypes.addressof(self._params)
        for _ in range(count):
            check(driver.cuLaunchKernel(
                self._function, 1, 1, 1, ELEMENTS, 1, 1, 0, self._stream, params, 0
            ))  # fmt: skip
        check(driver.cuStreamSynchronize(self._stream))


def raw_cuda() -> RawCuda | None:
    """The raw CUDA anchor where a device answers, else None."""
    if discover("auto").backend is not BackendKind.CUDA:
        return None
    return RawCuda()


def _anchors(n: int, concurrency: int, cuda: RawCuda | None) -> tuple[str, ...]:
    suffix = f"{n}" if concurrency == 1 else f"x{concurrency}/{n}"
    names = [f"dispatch/anchor/cpu/{suffix}"]
    if cuda is not None:
        names.append(f"dispatch/anchor/cuda/{suffix}")
    return tuple(names)


def _anchor_benchmarks(
    n: int, concurrency: int, cpu: CpuDirect, cuda: RawCuda | None
) -> list[Benchmark]:
    suffix = f"{n}" if concurrency == 1 else f"x{concurrency}/{n}"
    params = {"launches": n * concurrency}
    found = [
        Benchmark(
            f"dispatch/anchor/cpu/{suffix}",
            functools.partial(cpu.launches, n * concurrency),
            description=f"{n * concurrency} direct CpuBackend.launch calls, in process",
            params=params,
        )
    ]
    if cuda is not None:
        found.append(
            Benchmark(
                f"dispatch/anchor/cuda/{suffix}",
                functools.partial(cuda.launches, n * concurrency),
                description=f"raw cuLaunchKernel x {n * concurrency}, one stream sync",
                params=params,
            )
        )
    return found


@group("dispatch")
def dispatch(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
    """Starts the stack, deploys the guest, self-times the large sizes, yields the rest."""
    with contextlib.ExitStack() as cleanup:
        temp = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tw-dispatch-")))
        stack = LocalStack(
            temp / "stack",
            ephemeral_ports=True,
            extra_env={
                "OTEL_TRACES_EXPORTER": "none",
                # A wave of 64 x 1000 launches on the cpu backend takes seconds per call.
                "TENSORWASM_EXECUTOR_DEFAULT_TIMEOUT_SECONDS": "240",
                "TENSORWASM_EXECUTOR_MAX_TIMEOUT_SECONDS": "240",
                "TENSORWASM_EXECUTOR_WORKERS": str(CONCURRENCY),
                "TENSORWASM_EXECUTOR_MAX_IN_FLIGHT": str(2 * CONCURRENCY),
                "TENSORWASM_EXECUTOR_MAX_IN_FLIGHT_PER_TENANT": str(2 * CONCURRENCY),
                # The path's overhead, not the kernel: NumPy references, as the anchor
                # (group ptx_cpu measures the PTX executor).
                "TENSORWASM_DISPATCHER_CPU_KERNELS": "reference",
                "TENSORWASM_DISPATCHER_MAX_IN_FLIGHT": str(CONCURRENCY),
                "TENSORWASM_DISPATCHER_MAX_IN_FLIGHT_PER_TENANT": str(CONCURRENCY),
            },
        )
        cleanup.callback(stack.stop)
        gateway = stack.start()["gateway"].grpc_address
        with GatewayClient(gateway) as client:
            client.create_function(FUNCTION_ID, guest_module())
        stub = pb_grpc.GatewayServiceStub(cleanup.enter_context(grpc.insecure_channel(gateway)))
        pool = cleanup.enter_context(concurrent.futures.ThreadPoolExecutor(CONCURRENCY))

        def call(n: int) -> None:
            request = pb.InvokeRequest(
                name=f"functions/{FUNCTION_ID}",
                export_name="launches",
                args=[values_pb2.Value(i32=n)],
            )
            outcome = stub.Invoke(request, timeout=CALL_TIMEOUT_SECONDS).outcome
            if outcome.WhichOneof("result") != "success" or outcome.success.results[0].i32:
                raise RuntimeError(f"launches({n}) failed: {outcome}")

        def wave(n: int) -> None:
            for future in [pool.submit(call, n) for _ in range(CONCURRENCY)]:
                future.result()

        cpu, cuda = CpuDirect(), raw_cuda()
        for n in SIZES:
            call(n)  # every size works before anything is timed
        backend = "cuda" if cuda is not None else "cpu"
        self_timed: dict[str, Any] = {}
        tiers: list[tuple[str, Callable[[int], None], int, Tier, Sequence[int]]] = [
            ("serial", call, 1, SERIAL_TIER, [n for n in SIZES if n not in HARNESS_SIZES]),
            ("concurrent_cap64", wave, CONCURRENCY, CONCURRENT_TIER, SIZES),
        ]
        for label, run, concurrency, full_tier, sizes in tiers:
            tier = QUICK_TIER if config.quick else full_tier
            for n in sizes:
                name = f"dispatch/{label}/{n}"
                benchmarks = [
                    Benchmark(
                        name,
                        functools.partial(run, n),
                        anchors=_anchors(n, concurrency, cuda),
                        description=f"{concurrency} call(s) of launches({n}) via the stack",
                        params={"launches": n * concurrency, "backend": backend},
                    ),
                    *_anchor_benchmarks(n, concurrency, cpu, cuda),
                ]
                results = run_self_timed(f"dispatch [self-timed: {name}]", benchmarks, tier)
                self_timed[name] = [as_params(result, tier) for result in results.values()]

        harness_timed: list[Benchmark] = []
        for n in HARNESS_SIZES:
            harness_timed.append(
                Benchmark(
                    f"dispatch/serial/{n}",
                    functools.partial(call, n),
                    anchors=_anchors(n, 1, cuda),
                    description=f"one call of launches({n}) via gateway -> executor -> dispatcher",
                    params={"launches": n, "backend": backend, "self_timed": self_timed}
                    if n == HARNESS_SIZES[0]
                    else {"launches": n, "backend": backend},
                )
            )
            harness_timed += _anchor_benchmarks(n, 1, cpu, cuda)
        if cuda is not None:
            harness_timed += [
                Benchmark(
                    "dispatch/module_load/ptx",
                    cuda.load_ptx,
                    description="cuModuleLoadData of vector_add's PTX (driver JIT), unload",
                ),
                Benchmark(
                    "dispatch/module_load/cubin",
                    cuda.load_cubin,
                    anchors=("dispatch/module_load/ptx",),
                    description="cuModuleLoadData of the cuLink cubin of the same PTX, unload",
                ),
            ]
        yield harness_timed
