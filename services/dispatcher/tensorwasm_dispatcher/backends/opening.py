"""Opening the backend the settings ask for (in the dispatcher, or in a worker process)."""

from __future__ import annotations

from tensorwasm_dispatcher.backends.base import Backend
from tensorwasm_dispatcher.backends.cpu import CpuBackend, CpuKernels
from tensorwasm_dispatcher.backends.cubin_sharing import JitArtifactStore
from tensorwasm_dispatcher.backends.discovery import (
    BackendKind,
    DeviceReport,
    cpu_report,
    discover,
)
from tensorwasm_dispatcher.settings import DispatcherSettings

__all__ = ["open_backend"]


def open_backend(settings: DispatcherSettings) -> tuple[DeviceReport, Backend]:
    """The backend the settings ask for: cuda when a device answers (or is required),
    else cpu. A cuda device that answers discovery but cannot be opened falls back to cpu
    under `auto` and fails the start under `cuda`."""
    report = discover(settings.backend)
    if report.backend is BackendKind.CUDA:
        from tensorwasm_dispatcher.backends.cuda import CudaBackend

        artifacts = None
        if settings.jit_address:  # cubins shared through the jit cache
            artifacts = JitArtifactStore(
                settings.jit_address,
                timeout_seconds=settings.jit_timeout_seconds,
                service_token=settings.service_token(),
                tls=settings.client_tls(),
            )
        try:
            backend = CudaBackend(
                report.devices[0].ordinal,
                artifacts=artifacts,
                cubin_cache_bytes=settings.cubin_cache_bytes,
            )
            return report, backend
        except Exception as exc:
            if artifacts is not None:
                artifacts.close()
            if settings.backend == "cuda":
                raise
            report = cpu_report(f"the CUDA device could not be opened: {exc}")
    return report, CpuBackend(
        kernels=CpuKernels(settings.cpu_kernels),
        launch_timeout_seconds=settings.cpu_launch_timeout_seconds,
    )
