"""Builds and runs the executor server."""

from __future__ import annotations

import asyncio
import logging

import grpc
from tensorwasm.executor.v1 import executor_service_pb2_grpc as pb_grpc
from tensorwasm_common.blob_client import BlobClient
from tensorwasm_common.bootstrap import HealthCheck, ServiceHost, create_host, serve_forever
from tensorwasm_common.channels import open_channel, peer_serving
from tensorwasm_common.snapshot_client import SnapshotClient

from tensorwasm_executor.admission import Admission
from tensorwasm_executor.call_log import CallLogInterceptor
from tensorwasm_executor.gpu.dispatcher_client import DispatcherClient
from tensorwasm_executor.gpu.host import CudaHost
from tensorwasm_executor.gpu.jit_client import JitClient
from tensorwasm_executor.gpu.jit_ops import JitHost
from tensorwasm_executor.gpu.registered import RegisteredKernelHost
from tensorwasm_executor.gpu.registry_client import KernelRegistryClient
from tensorwasm_executor.guest_calls import GuestCalls
from tensorwasm_executor.images.image_provider import ImageProvider
from tensorwasm_executor.images.module_provider import ModuleProvider
from tensorwasm_executor.instances.snapshots import InstanceSnapshots
from tensorwasm_executor.instances.table import InstanceTable
from tensorwasm_executor.scheduling import FairPool
from tensorwasm_executor.servicer import SERVICE, ExecutorServicer
from tensorwasm_executor.settings import ExecutorSettings
from tensorwasm_executor.wasm.sandbox import Sandbox

_log = logging.getLogger(__name__)


async def _expire_idle(
    instances: InstanceTable, snapshots: InstanceSnapshots, interval_seconds: float
) -> None:
    """Every `interval_seconds`: terminates instances idle past their TTL (deleting their
    checkpoints), then checkpoints the idle ones whose checkpoint is due."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval_seconds)
        for live in instances.expire():
            _log.info("instance %s expired (idle ttl)", live.id, extra={"tenant": live.tenant})
            await loop.run_in_executor(None, live.resident.terminate)
            await snapshots.forget_checkpoint(live)
        try:
            await snapshots.checkpoint_due()
        except Exception:  # a sweep must survive anything one checkpoint does
            _log.exception("checkpoint sweep failed")


def gpu_host(settings: ExecutorSettings) -> tuple[CudaHost, DispatcherClient | None]:
    """The `wasi:cuda` host module, wired to the dispatcher when one is configured."""
    client = None
    if settings.dispatcher_address:
        client = DispatcherClient(
            settings.dispatcher_address,
            max_message_bytes=settings.dispatcher_max_message_bytes,
            service_token=settings.service_token(),
            tls=settings.client_tls(),
        )
    host = CudaHost(
        client.transport if client is not None else None,
        max_batch_commands=settings.gpu_batch_max_commands,
        max_batch_bytes=settings.gpu_batch_max_bytes,
    )
    return host, client


async def serve(settings: ExecutorSettings) -> None:
    """Serves until SIGTERM.

    Health: SERVING while it can run wasm (always, while it runs): modules it holds run
    without the store, and guests without GPU work need no dispatcher. Each dependency
    has its own health name: `dependency:snapshot` (cold modules and images),
    `dependency:dispatcher` (`wasi:cuda`; -1 to guests while it is down) and
    `dependency:jit` (`tensorwasm:gpu`), the last two when configured.
    """
    gpu, dispatcher = gpu_host(settings)
    jit = (
        JitClient(
            settings.jit_address,
            target=settings.jit_target,
            service_token=settings.service_token(),
            tls=settings.client_tls(),
        )
        if settings.jit_address
        else None
    )
    jit_host = JitHost(jit)
    registered = RegisteredKernelHost(
        KernelRegistryClient(
            settings.snapshot_address,
            max_message_bytes=settings.max_message_bytes,
            service_token=settings.service_token(),
            tls=settings.client_tls(),
        )
        if dispatcher is not None
        else None
    )
    gpu.offload_jit = jit_host  # auto-offload (offload.py), with a dispatcher and a jit cache
    sandbox = Sandbox(
        default_timeout_seconds=settings.default_timeout_seconds,
        max_output_bytes=settings.max_output_bytes,
        epoch_tick_seconds=settings.epoch_tick_seconds,
        module_cache_entries=settings.module_cache_entries,
        max_memory_bytes=settings.max_memory_bytes,
        max_table_elements=settings.max_table_elements,
        fuel_metering=settings.fuel_metering,
        host_modules=[*gpu.host_modules, jit_host.host_module, registered.host_module],
    )
    admission = Admission(
        max_in_flight=settings.in_flight_limit, max_per_tenant=settings.tenant_in_flight_limit
    )
    workers = FairPool(settings.workers, settings.tenant_running_limit, thread_name_prefix="guest")
    compile_pool = FairPool(
        settings.compile_limit, settings.tenant_compile_limit, thread_name_prefix="compile"
    )
    store_channel = open_channel(
        settings.snapshot_address,
        max_message_bytes=settings.max_message_bytes,
        service_token=settings.service_token(),
        tls=settings.client_tls(),
        balanced=True,  # store replicas are interchangeable
    )
    blobs = BlobClient(store_channel)
    modules = ModuleProvider(
        sandbox,
        blobs.get,
        compile_pool,
        artifact_dir=settings.artifact_dir,
        artifact_dir_max_bytes=settings.artifact_dir_max_bytes,
        snapshots=SnapshotClient(store_channel),
    )
    images = ImageProvider(
        sandbox, blobs.get, compile_pool, image_dir=settings.image_dir,
        records=SnapshotClient(store_channel), cache_entries=settings.image_cache_entries,
        image_dir_max_bytes=settings.image_dir_max_bytes,
    )  # fmt: skip
    host: ServiceHost = create_host(
        "executor",
        settings,
        [SERVICE],
        interceptors=[CallLogInterceptor()] if settings.call_log else [],
    )
    instances = InstanceTable(
        max_instances=settings.max_instances, max_per_tenant=settings.max_instances_per_tenant
    )
    snapshots = InstanceSnapshots(
        sandbox, instances, blobs.get, SnapshotClient(store_channel), workers
    )
    servicer = ExecutorServicer(
        GuestCalls(
            settings,
            sandbox,
            modules,
            workers,
            admission=admission,
            instances=instances,
            gpu=gpu,
            images=images,
            snapshots=snapshots,
        ),
        guest_dirs_root=settings.guest_dirs_root,
    )
    assert host.hop is not None
    servicer.carry_calls(
        host.hop, call_log=settings.call_log, max_answer_bytes=settings.max_message_bytes
    )
    host.on_drain.append(servicer.drain_calls)
    pb_grpc.add_ExecutorServiceServicer_to_server(servicer, host.server)
    sweeper = asyncio.create_task(
        _expire_idle(instances, snapshots, settings.instance_sweep_seconds)
    )

    health_channels = {"snapshot": store_channel}
    for dependency, address in (
        ("dispatcher", settings.dispatcher_address),
        ("jit", settings.jit_address),
    ):
        if address:  # the GPU clients' channels are blocking ones: probe on one of our own
            health_channels[dependency] = open_channel(
                address, service_token=settings.service_token(), tls=settings.client_tls()
            )

    def serving(channel: grpc.aio.Channel) -> HealthCheck:
        async def check() -> bool:
            return await peer_serving(channel)

        return check

    async def cleanup() -> None:
        sweeper.cancel()
        for live in instances.drain():
            live.resident.terminate()
        for channel in health_channels.values():
            await channel.close()
        workers.shutdown(cancel_futures=True)
        compile_pool.shutdown(cancel_futures=True)
        sandbox.close()
        if dispatcher is not None:
            dispatcher.close()
        if jit is not None:
            jit.close()
        registered.close()

    await serve_forever(
        host,
        dependencies={name: serving(channel) for name, channel in health_channels.items()},
        cleanup=cleanup,
    )
