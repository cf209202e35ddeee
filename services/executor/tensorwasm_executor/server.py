"""Builds and runs the executor server."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from tensorwasm.executor.v1 import executor_service_pb2 as pb
from tensorwasm.executor.v1 import executor_service_pb2_grpc as pb_grpc
from tensorwasm_common.blob_client import BlobClient
from tensorwasm_common.bootstrap import ServiceHost, create_host, serve_forever
from tensorwasm_common.channels import open_channel, peer_serving

from tensorwasm_executor.admission import Admission
from tensorwasm_executor.modules import ModuleProvider
from tensorwasm_executor.sandbox import Sandbox
from tensorwasm_executor.servicer import ExecutorServicer
from tensorwasm_executor.settings import ExecutorSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ExecutorService"].full_name


async def serve(settings: ExecutorSettings) -> None:
    """Serves until SIGTERM; NOT_SERVING while the snapshot store is unreachable."""
    sandbox = Sandbox(
        default_timeout_seconds=settings.default_timeout_seconds,
        max_output_bytes=settings.max_output_bytes,
        epoch_tick_seconds=settings.epoch_tick_seconds,
        module_cache_entries=settings.module_cache_entries,
        max_memory_bytes=settings.max_memory_bytes,
        max_table_elements=settings.max_table_elements,
        fuel_metering=settings.fuel_metering,
    )
    admission = Admission(
        max_in_flight=settings.in_flight_limit, max_per_tenant=settings.tenant_in_flight_limit
    )
    workers = ThreadPoolExecutor(settings.workers, thread_name_prefix="guest")
    compile_pool = ThreadPoolExecutor(1, thread_name_prefix="compile")
    store_channel = open_channel(
        settings.snapshot_address, max_message_bytes=settings.max_message_bytes
    )
    blobs = BlobClient(store_channel)
    modules = ModuleProvider(sandbox, blobs.get, compile_pool)
    host: ServiceHost = create_host("executor", settings, [SERVICE_NAME])
    pb_grpc.add_ExecutorServiceServicer_to_server(
        ExecutorServicer(settings, sandbox, modules, workers, admission), host.server
    )

    async def healthy() -> bool:
        return await peer_serving(store_channel)

    async def cleanup() -> None:
        await store_channel.close()
        workers.shutdown(wait=False, cancel_futures=True)
        compile_pool.shutdown(wait=False, cancel_futures=True)
        sandbox.close()

    await serve_forever(host, health_check=healthy, cleanup=cleanup)
