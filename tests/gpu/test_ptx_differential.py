"""GPU differential test: every PTX case (user-style kernels, the kernel library, every
jit-emitted kernel) runs on the device and on the cpu backend's PTX executor; the device
meets the expectation, and the two agree bit for bit wherever the case is exact.

Run on a machine with an NVIDIA device: `pytest -m gpu tests/gpu/test_ptx_differential.py`
(or `python -m tests.ptx_kernels.differential` for the per-output report).
"""

from __future__ import annotations

import pytest
from tensorwasm_dispatcher.backends.base import Backend
from tensorwasm_dispatcher.backends.cpu import CpuBackend

from tests.ptx_kernels.cases import PtxCase, all_cases
from tests.ptx_kernels.differential import compare

pytestmark = pytest.mark.gpu

CASES = all_cases()


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_cpu_executor_agrees_with_the_device(cuda_backend: Backend, case: PtxCase) -> None:
    rows = compare(case, CpuBackend(), cuda_backend)
    for row in rows:
        assert row.device_ok, f"{case.name}: the device missed the expectation: {row.detail}"
        assert row.ok, f"{case.name} output {row.output}: {row.largest_difference} {row.unit}"
