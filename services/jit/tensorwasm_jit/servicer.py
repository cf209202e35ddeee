"""JitCacheService: proto <-> kernel cache translation."""

from __future__ import annotations

import grpc
from tensorwasm.jit.v1 import jit_service_pb2 as pb
from tensorwasm.jit.v1 import jit_service_pb2_grpc as pb_grpc

from tensorwasm_jit.kernel_cache import KernelCache
from tensorwasm_jit.ptx_emit import KernelSpec

_DTYPES = {pb.DATA_TYPE_F32: "f32", pb.DATA_TYPE_F16: "f16", pb.DATA_TYPE_UNSPECIFIED: "f32"}


class JitCacheServicer(pb_grpc.JitCacheServiceServicer):
    """Emits kernels on a miss and serves them from the cache afterwards."""

    def __init__(self, cache: KernelCache) -> None:
        self._cache = cache

    async def EmitKernel(
        self, request: pb.EmitKernelRequest, context: grpc.aio.ServicerContext
    ) -> pb.EmitKernelResponse:
        spec = KernelSpec(
            op=request.op,
            params=dict(request.params),
            dtype=_DTYPES.get(request.dtype, "unknown"),
            target=request.target,
        )
        kernel, cache_hit = self._cache.get_or_emit(spec)
        return pb.EmitKernelResponse(
            kernel=pb.Kernel(
                cache_key=kernel.cache_key,
                ptx=kernel.ptx,
                entry=kernel.entry,
                target=kernel.target,
                ptx_digest=kernel.ptx_digest,
            ),
            cache_hit=cache_hit,
        )
