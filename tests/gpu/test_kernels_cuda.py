"""GPU tests: every canonical PTX, loaded by the CUDA driver, matches its NumPy reference.

Run on a machine with an NVIDIA device: `pytest -m gpu tests/gpu`. `cuda` is imported
inside the fixtures only, so collecting this file needs no driver.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from tensorwasm_kernels import CATALOG, KernelSpec, ParamKind

pytestmark = pytest.mark.gpu

Dim3 = tuple[int, int, int]
F32 = npt.NDArray[np.float32]
SENTINEL = np.float32(-12345.0)


class _Cuda:
    """The few driver calls the tests need, with one `_check` for the result tuples."""

    def __init__(self) -> None:
        from cuda.bindings import driver

        self.driver = driver
        self._check(driver.cuInit(0))
        (self.device,) = self._check(driver.cuDeviceGet(0))
        (self.context,) = self._check(driver.cuDevicePrimaryCtxRetain(self.device))
        self._check(driver.cuCtxSetCurrent(self.context))
        self._modules: dict[str, Any] = {}
        self._functions: dict[str, Any] = {}

    def _check(self, result: Any) -> tuple[Any, ...]:
        status, *values = result if isinstance(result, tuple) else (result,)
        if int(status) != int(self.driver.CUresult.CUDA_SUCCESS):
            name = getattr(status, "name", str(status))
            raise AssertionError(f"CUDA driver call failed: {name} ({int(status)})")
        return tuple(values)

    def function(self, spec: KernelSpec) -> Any:
        if spec.entry not in self._functions:
            image = np.frombuffer(spec.ptx_text().encode("utf-8") + b"\0", dtype=np.uint8)
            (module,) = self._check(self.driver.cuModuleLoadData(image.ctypes.data))
            self._modules[spec.entry] = module
            (function,) = self._check(
                self.driver.cuModuleGetFunction(module, spec.entry.encode("ascii"))
            )
            self._functions[spec.entry] = function
        return self._functions[spec.entry]

    def launch(
        self,
        spec: KernelSpec,
        buffers: Sequence[F32],
        scalars: Sequence[float],
        grid: Dim3,
        block: Dim3,
    ) -> list[F32]:
        """Copies the buffers in, launches, copies every buffer back and frees them."""
        pointers = []
        try:
            for host in buffers:
                (pointer,) = self._check(self.driver.cuMemAlloc(max(host.nbytes, 4)))
                pointers.append(pointer)
                if host.nbytes:
                    self._check(self.driver.cuMemcpyHtoD(pointer, host.ctypes.data, host.nbytes))
            slots = [np.array([int(p)], dtype=np.uint64) for p in pointers]
            for param, value in zip(spec.scalar_params, scalars, strict=True):
                dtype = np.float32 if param.kind is ParamKind.F32 else np.int32
                slots.append(np.array([value], dtype=dtype))
            params = np.array([slot.ctypes.data for slot in slots], dtype=np.uint64)
            self._check(
                self.driver.cuLaunchKernel(
                    self.function(spec), *grid, *block, 0, 0, params.ctypes.data, 0
                )
            )
            self._check(self.driver.cuCtxSynchronize())
            results = []
            for host, pointer in zip(buffers, pointers, strict=True):
                back = np.empty_like(host)
                if host.nbytes:
                    self._check(self.driver.cuMemcpyDtoH(back.ctypes.data, pointer, host.nbytes))
                results.append(back)
            return results
        finally:
            for pointer in pointers:
                self._check(self.driver.cuMemFree(pointer))

    def close(self) -> None:
        for module in self._modules.values():
            self._check(self.driver.cuModuleUnload(module))
        self._check(self.driver.cuDevicePrimaryCtxRelease(self.device))


@pytest.fixture(scope="module")
def cuda(gpu_run: None) -> Iterator[_Cuda]:
    try:
        device = _Cuda()
    except Exception as exc:  # a missing driver or device fails a GPU run, loudly
        pytest.fail(f"no usable CUDA device for the GPU tests: {exc!r}")
    yield device
    device.close()


@dataclass(frozen=True)
class Case:
    """One launch: buffers (outputs pre-filled with a sentinel), scalars and geometry."""

    kernel: str
    buffers: tuple[F32, ...]
    scalars: tuple[float, ...]
    grid: Dim3
    block: Dim3
    exact: bool

    @property
    def id(self) -> str:
        return f"{self.kernel}-g{'x'.join(map(str, self.grid))}-b{'x'.join(map(str, self.block))}"


def _cases() -> list[Case]:
    rng = np.random.default_rng(42)

    def rand(size: int) -> F32:
        return rng.standard_normal(size).astype(np.float32)

    def sentinel(size: int) -> F32:
        return np.full(size, SENTINEL, dtype=np.float32)

    def blocks(count: int, per_block: int) -> int:
        return max(1, math.ceil(count / per_block))

    n = 100_003
    m, cols, k = 70, 45, 33
    height, width = 61, 77
    return [
        Case(
            "vector_add",
            (rand(n), rand(n), sentinel(n)),
            (n,),
            (blocks(n, 256), 1, 1),
            (256, 1, 1),
            True,
        ),
        Case("vector_add", (rand(n), rand(n), sentinel(n)), (n,), (50, 2, 1), (256, 1, 2), True),
        Case("saxpy", (rand(n), rand(n)), (1.7, n), (blocks(n, 128), 1, 1), (128, 1, 1), True),
        Case("saxpy", (rand(n), rand(n)), (-0.3, n), (20, 3, 1), (128, 2, 1), True),
        Case(
            "matmul",
            (rand(m * k), rand(k * cols), sentinel(m * cols)),
            (m, cols, k),
            (blocks(cols, 16), blocks(m, 16), 1),
            (16, 16, 1),
            False,
        ),
        Case(
            "matmul",
            (rand(m * k), rand(k * cols), sentinel(m * cols)),
            (m, cols, k),
            (2, 1, 1),
            (16, 16, 1),
            False,
        ),
        Case(
            "matmul",
            (rand(256), rand(256), sentinel(256)),
            (16, 16, 16),
            (1, 1, 1),
            (32, 8, 1),
            True,
        ),
        Case(
            "conv2d",
            (rand(height * width), rand(9), sentinel(height * width)),
            (height, width),
            (blocks(width, 16), blocks(height, 16), 1),
            (16, 16, 1),
            True,
        ),
        Case(
            "conv2d",
            (rand(height * width), rand(9), sentinel(height * width)),
            (height, width),
            (3, 2, 2),
            (8, 8, 1),
            True,
        ),
        Case(
            "reduce_sum", (rand(n), np.zeros(1, np.float32)), (n,), (64, 1, 1), (256, 1, 1), False
        ),
        Case(
            "reduce_sum",
            (rand(n), np.array([10.0], np.float32)),
            (n,),
            (3, 2, 1),
            (96, 2, 1),
            False,
        ),
    ]


CASES = [pytest.param(case, id=case.id) for case in _cases()]


@pytest.mark.parametrize("case", CASES)
def test_gpu_matches_reference(cuda: _Cuda, case: Case) -> None:
    spec = CATALOG[case.kernel]
    on_gpu = cuda.launch(spec, case.buffers, case.scalars, case.grid, case.block)
    on_cpu = [buffer.copy() for buffer in case.buffers]
    spec.run_reference(on_cpu, case.scalars, case.grid, case.block)
    for param, gpu, cpu in zip(spec.pointer_params, on_gpu, on_cpu, strict=True):
        if case.exact:
            np.testing.assert_array_equal(gpu, cpu, err_msg=param.name)
        elif spec.name == "reduce_sum" and param.name == "output":  # summed in another order
            assert gpu[0] == pytest.approx(float(cpu[0]), rel=1e-4, abs=1e-2)
        else:
            np.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-5, err_msg=param.name)
