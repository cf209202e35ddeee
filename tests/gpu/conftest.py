"""GPU test fixtures: skipped unless the run selects them (`pytest -m gpu`); a device
that is missing then fails them loudly instead of skipping."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tensorwasm_dispatcher.backends.base import Backend

SKIP_REASON = "GPU test: run with `pytest -m gpu` on a machine with an NVIDIA device"


def gpu_selected(config: pytest.Config) -> bool:
    """True when the run's marker expression names `gpu`."""
    return "gpu" in (config.getoption("markexpr", default="") or "")


@pytest.fixture(scope="session")
def gpu_run(request: pytest.FixtureRequest) -> None:
    """Skips the test unless the run selected the GPU tests."""
    if not gpu_selected(request.config):
        pytest.skip(SKIP_REASON)


@pytest.fixture(scope="module")
def cuda_backend(gpu_run: None) -> Iterator[Backend]:
    """The dispatcher's cuda backend on device 0 (imported here: collecting needs no driver)."""
    from tensorwasm_dispatcher.backends.cuda import CudaBackend

    try:
        backend = CudaBackend(0)
    except Exception as exc:  # a missing driver or device fails a GPU run, loudly
        pytest.fail(f"no usable CUDA device for the GPU tests: {exc!r}")
    yield backend
    backend.close()
