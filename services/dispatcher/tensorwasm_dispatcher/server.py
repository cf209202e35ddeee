"""Builds and runs the dispatcher server."""

from __future__ import annotations

import asyncio
import logging

from tensorwasm.dispatcher.v1 import dispatcher_service_pb2 as pb
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2_grpc as pb_grpc
from tensorwasm_common.bootstrap import ServiceHost, create_host, serve_forever

from tensorwasm_dispatcher.accounting import Admission, Ledger
from tensorwasm_dispatcher.backends import (
    Backend,
    BackendKind,
    CpuBackend,
    CpuKernels,
    DeviceReport,
    JitArtifactStore,
    cpu_report,
    discover,
)
from tensorwasm_dispatcher.batch_runner import Dispatcher
from tensorwasm_dispatcher.gpu_sessions import GpuSessionTable
from tensorwasm_dispatcher.intake import BatchIntake
from tensorwasm_dispatcher.scheduling import FairScheduler
from tensorwasm_dispatcher.servicer import DispatcherServicer
from tensorwasm_dispatcher.settings import DispatcherSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DispatcherService"].full_name
_log = logging.getLogger(__name__)


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


def build_server(
    settings: DispatcherSettings,
) -> tuple[ServiceHost, Dispatcher, FairScheduler]:
    """Opens the backend and registers the servicer."""
    report, backend = open_backend(settings)
    _log.info(
        "backend selected",
        extra={"backend": report.backend.value, "fallback_reason": report.fallback_reason},
    )
    ledger = Ledger(settings.tenant_memory_quota_bytes)
    sessions = GpuSessionTable(
        backend,
        idle_ttl_seconds=settings.session_idle_ttl_seconds,
        on_count=lambda tenant, delta: ledger.record(tenant, open_sessions=delta),
    )
    dispatcher = Dispatcher(backend, ledger, sessions)
    admission = Admission(
        max_in_flight=settings.max_in_flight,
        max_per_tenant=settings.tenant_in_flight_limit,
        retry_after_seconds=settings.retry_after_seconds,
    )
    scheduler = FairScheduler(settings.workers, quantum=settings.fair_quantum_commands)
    host = create_host("dispatcher", settings, [SERVICE_NAME])
    pb_grpc.add_DispatcherServiceServicer_to_server(
        DispatcherServicer(report, BatchIntake(dispatcher, admission, scheduler)), host.server
    )
    return host, dispatcher, scheduler


async def _expire_sessions(dispatcher: Dispatcher, interval_seconds: float) -> None:
    """Closes sessions idle past their TTL, every `interval_seconds`, off the loop."""
    while True:
        await asyncio.sleep(interval_seconds)
        expired = await asyncio.to_thread(dispatcher.sessions.expire)
        if expired:
            _log.info("idle sessions closed", extra={"sessions": expired})


async def serve(settings: DispatcherSettings) -> None:
    """Serves until SIGTERM, then closes the sessions and the device."""
    host, dispatcher, scheduler = build_server(settings)
    sweeper = asyncio.create_task(_expire_sessions(dispatcher, settings.session_sweep_seconds))

    async def cleanup() -> None:
        sweeper.cancel()
        await asyncio.to_thread(scheduler.shutdown)
        dispatcher.sessions.close_all()
        dispatcher.backend.close()

    await serve_forever(host, cleanup=cleanup)
