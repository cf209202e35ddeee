"""GPU tests of the jit's emitted kernels: every case of `tests.emitted_cases` runs on the
device through the dispatcher's cuda backend and matches the NumPy expectation, for PTX
emitted for each target the device can load.

Run on a machine with an NVIDIA device: `pytest -m gpu tests/gpu`.
"""

from __future__ import annotations

import pytest
from tensorwasm_dispatcher.accounting import Ledger
from tensorwasm_dispatcher.backends.base import Backend
from tensorwasm_dispatcher.batch_runner import Dispatcher
from tensorwasm_dispatcher.gpu_sessions import GpuSessionTable

from tests.emitted_cases import Case, all_cases, check_case, run_case

pytestmark = pytest.mark.gpu

# sm_70 PTX is loaded too: the driver JIT-compiles it for the device (ptxas 13 will not).
CASES = [case for target in ("sm_70", "sm_80", "sm_90") for case in all_cases(target)]


@pytest.mark.parametrize("case", CASES, ids=[f"{case.spec.target}-{case.name}" for case in CASES])
def test_emitted_kernel_matches_numpy_on_the_device(cuda_backend: Backend, case: Case) -> None:
    dispatcher = Dispatcher(
        cuda_backend, Ledger(1 << 30), GpuSessionTable(cuda_backend, idle_ttl_seconds=60)
    )
    check_case(case, run_case(dispatcher, case, f"{case.spec.target}-{case.name}"))
