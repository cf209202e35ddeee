"""Builds and runs the dispatcher server."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from tensorwasm.dispatcher.v1 import dispatcher_service_pb2 as pb
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2_grpc as pb_grpc
from tensorwasm_common.bootstrap import ServiceHost, create_host, serve_forever

from tensorwasm_dispatcher.accounting import Admission, Ledger
from tensorwasm_dispatcher.backends import (
    BackendKind,
    DeviceReport,
    discover,
)
from tensorwasm_dispatcher.backends.opening import open_backend
from tensorwasm_dispatcher.batch_runner import Dispatcher
from tensorwasm_dispatcher.gpu_sessions import GpuSessionTable
from tensorwasm_dispatcher.intake import BatchIntake, BatchRunner
from tensorwasm_dispatcher.scheduling import FairScheduler
from tensorwasm_dispatcher.servicer import DispatcherServicer
from tensorwasm_dispatcher.settings import DispatcherSettings
from tensorwasm_dispatcher.workers.placement import Topology, detect
from tensorwasm_dispatcher.workers.pool import WorkerPool

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DispatcherService"].full_name
_log = logging.getLogger(__name__)


def build_server(
    settings: DispatcherSettings,
) -> tuple[ServiceHost, BatchRunner, FairScheduler]:
    """Opens the backend (in this process, or in per-tenant workers) and registers the
    servicer."""
    ledger = Ledger(settings.tenant_memory_quota_bytes)
    runner: BatchRunner
    discovered = discover(settings.backend)
    isolation = _isolation(settings, discovered)
    topology = Topology()
    if isolation == "off":
        report, backend = open_backend(settings)
        sessions = GpuSessionTable(
            backend,
            idle_ttl_seconds=settings.session_idle_ttl_seconds,
            max_sessions_per_tenant=settings.max_sessions_per_tenant,
            on_count=lambda tenant, delta: ledger.record(tenant, open_sessions=delta),
        )
        runner = Dispatcher(backend, ledger, sessions)
    else:
        # Each worker opens the backend discovery found (no fallback of its own to cpu).
        report = discovered
        worker_settings = dataclasses.replace(settings, backend=report.backend.value)
        if report.backend is BackendKind.CUDA:
            topology = detect()
        runner = WorkerPool(worker_settings, ledger, topology=topology)
    _log.info(
        "backend selected",
        extra={
            "backend": report.backend.value,
            "fallback_reason": report.fallback_reason,
            "isolation": isolation,
            "mig_instances": len(topology.mig),
            "mps": topology.mps,
        },
    )
    admission = Admission(
        max_in_flight=settings.max_in_flight,
        max_per_tenant=settings.tenant_in_flight_limit,
        retry_after_seconds=settings.retry_after_seconds,
    )
    scheduler = FairScheduler(settings.workers, quantum=settings.fair_quantum_commands)
    host = create_host("dispatcher", settings, [SERVICE_NAME])
    pb_grpc.add_DispatcherServiceServicer_to_server(
        DispatcherServicer(
            report,
            BatchIntake(runner, admission, scheduler, max_run_seconds=settings.max_run_seconds),
            isolation=isolation,
            topology=topology,
        ),
        host.server,
    )
    return host, runner, scheduler


def _isolation(settings: DispatcherSettings, report: DeviceReport) -> str:
    """The worker isolation in effect: `auto` is `tenant` on a cuda device, else `off`."""
    if settings.worker_isolation != "auto":
        return settings.worker_isolation
    return "tenant" if report.backend is BackendKind.CUDA else "off"


async def _sweep(runner: BatchRunner, interval_seconds: float) -> None:
    """Closes sessions idle past their TTL (and stops idle workers), every
    `interval_seconds`, off the loop."""
    while True:
        await asyncio.sleep(interval_seconds)
        if isinstance(runner, WorkerPool):
            stopped = await asyncio.to_thread(runner.sweep)
            if stopped:
                _log.info("idle GPU workers stopped", extra={"workers": stopped})
        elif isinstance(runner, Dispatcher):
            expired = await asyncio.to_thread(runner.sessions.expire)
            if expired:
                _log.info("idle sessions closed", extra={"sessions": expired})


async def serve(settings: DispatcherSettings) -> None:
    """Serves until SIGTERM, then closes the sessions (or workers) and the device."""
    host, runner, scheduler = build_server(settings)
    sweeper = asyncio.create_task(_sweep(runner, settings.session_sweep_seconds))

    async def cleanup() -> None:
        sweeper.cancel()
        await asyncio.to_thread(scheduler.shutdown)
        if isinstance(runner, WorkerPool):
            await asyncio.to_thread(runner.close)
        elif isinstance(runner, Dispatcher):
            runner.sessions.close_all()
            runner.backend.close()

    await serve_forever(host, cleanup=cleanup)
