"""JitCacheService: proto <-> kernel and artifact cache translation."""

from __future__ import annotations

import base64

import grpc
from tensorwasm.jit.v1 import jit_service_pb2 as pb
from tensorwasm.jit.v1 import jit_service_pb2_grpc as pb_grpc
from tensorwasm_common.errors import InvalidPageTokenError

from tensorwasm_jit.artifacts import ArtifactCache
from tensorwasm_jit.kernel_cache import KernelCache
from tensorwasm_jit.ptx import KernelSpec

_DTYPES = {pb.DATA_TYPE_F32: "f32", pb.DATA_TYPE_F16: "f16", pb.DATA_TYPE_UNSPECIFIED: "f32"}
_DTYPE_ENUMS = {"f32": pb.DATA_TYPE_F32, "f16": pb.DATA_TYPE_F16}
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_PAGE_MARK = "k1:"


class JitCacheServicer(pb_grpc.JitCacheServiceServicer):
    """Emits kernels on a miss and serves them from the cache afterwards; stores cubins."""

    def __init__(self, cache: KernelCache, artifacts: ArtifactCache) -> None:
        self._cache = cache
        self._artifacts = artifacts

    async def EmitKernel(
        self,
        request: pb.EmitKernelRequest,
        context: grpc.aio.ServicerContext[pb.EmitKernelRequest, pb.EmitKernelResponse],
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

    async def ListKernels(
        self,
        request: pb.ListKernelsRequest,
        context: grpc.aio.ServicerContext[pb.ListKernelsRequest, pb.ListKernelsResponse],
    ) -> pb.ListKernelsResponse:
        if request.page_size < 0:
            raise InvalidPageTokenError("page_size must not be negative")
        size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        page, last = self._cache.list_page(_after(request.page_token), size)
        return pb.ListKernelsResponse(
            kernels=[
                pb.KernelInfo(
                    cache_key=item.kernel.cache_key,
                    op=item.spec.op,
                    params=dict(item.spec.params),
                    dtype=_DTYPE_ENUMS.get(item.spec.dtype, pb.DATA_TYPE_UNSPECIFIED),
                    target=item.spec.target,
                    entry=item.kernel.entry,
                    ptx_digest=item.kernel.ptx_digest,
                    ptx_size_bytes=len(item.kernel.ptx.encode("utf-8")),
                )
                for item in page
            ],
            next_page_token=_token(last) if last else "",
        )

    async def PutArtifact(
        self,
        request: pb.PutArtifactRequest,
        context: grpc.aio.ServicerContext[pb.PutArtifactRequest, pb.PutArtifactResponse],
    ) -> pb.PutArtifactResponse:
        digest, created = self._artifacts.put(
            request.ptx_digest, request.compute_capability, request.data, replace=request.replace
        )
        return pb.PutArtifactResponse(data_digest=digest, created=created)

    async def GetArtifact(
        self,
        request: pb.GetArtifactRequest,
        context: grpc.aio.ServicerContext[pb.GetArtifactRequest, pb.GetArtifactResponse],
    ) -> pb.GetArtifactResponse:
        data, digest = self._artifacts.get(request.ptx_digest, request.compute_capability)
        return pb.GetArtifactResponse(data=data, data_digest=digest)


def _token(last_key: str) -> str:
    return base64.urlsafe_b64encode((_PAGE_MARK + last_key).encode()).decode()


def _after(token: str) -> str:
    """The last key of the previous page, from its token ("" for the first page)."""
    if not token:
        return ""
    try:
        decoded = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidPageTokenError("page_token is not one ListKernels issued") from None
    if not decoded.startswith(_PAGE_MARK) or len(decoded) != len(_PAGE_MARK) + 64:
        raise InvalidPageTokenError("page_token is not one ListKernels issued")
    return decoded[len(_PAGE_MARK) :]
