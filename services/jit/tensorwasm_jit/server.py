"""Builds and runs the jit cache server."""

from __future__ import annotations

from tensorwasm.jit.v1 import jit_service_pb2 as pb
from tensorwasm.jit.v1 import jit_service_pb2_grpc as pb_grpc
from tensorwasm_common.bootstrap import ServiceHost, create_host, serve_forever

from tensorwasm_jit.artifacts import ArtifactCache
from tensorwasm_jit.byte_store import ByteStore
from tensorwasm_jit.kernel_cache import KernelCache
from tensorwasm_jit.servicer import JitCacheServicer
from tensorwasm_jit.settings import JitSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["JitCacheService"].full_name


def build_server(settings: JitSettings) -> ServiceHost:
    """Registers the jit cache servicer on a new server."""
    host = create_host("jit", settings, [SERVICE_NAME])
    root = settings.data_dir
    disk = None
    if root is not None:
        disk = ByteStore(root / "kernels", max_bytes=settings.disk_max_bytes, tier="disk")
    cache = KernelCache(
        max_entries=settings.cache_entries, max_bytes=settings.cache_max_bytes, disk=disk
    )
    artifacts = ArtifactCache(
        ByteStore(
            None if root is None else root / "artifacts",
            max_bytes=settings.artifact_max_bytes,
            tier="artifacts",
        ),
        max_artifact_bytes=settings.max_artifact_bytes,
    )
    pb_grpc.add_JitCacheServiceServicer_to_server(JitCacheServicer(cache, artifacts), host.server)
    return host


async def serve(settings: JitSettings) -> None:
    """Serves until SIGTERM."""
    await serve_forever(build_server(settings))
