"""The kernel registry's RPCs (PublishKernel, GetKernel, ListKernels): proto <-> the
KernelService, mixed into GatewayServicer."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import grpc
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm_common.errors import InvalidPageTokenError, UnimplementedError

from tensorwasm_gateway.access import CURRENT_PRINCIPAL
from tensorwasm_gateway.access.tokens import may_publish_shared_kernels
from tensorwasm_gateway.kernels import KernelPublication, KernelRecord, KernelService, Publisher

DEFAULT_KERNEL_PAGE_SIZE = 100
MAX_KERNEL_PAGE_SIZE = 1000
_MAX_TOKEN_CHARS = 128


def kernel_manifest_to_wire(record: KernelRecord) -> pb.KernelManifest:
    """A stored manifest on the wire."""
    manifest = pb.KernelManifest(
        name=record.name,
        version=record.version,
        sm_version=record.sm_version,
        digest=record.digest,
        signature=record.signature,
        publisher=record.publisher,
        key_id=record.key_id,
        entry=record.entry,
        visibility=pb.KERNEL_VISIBILITY_SHARED if record.shared else pb.KERNEL_VISIBILITY_PRIVATE,
        namespace=record.namespace,
        ptx_size_bytes=record.ptx_size_bytes,
    )
    manifest.publish_time.FromNanoseconds(record.publish_time_ns)
    return manifest


def publication_from_wire(request: pb.PublishKernelRequest) -> KernelPublication:
    """The typed publication of a PublishKernel request."""
    manifest = request.manifest
    return KernelPublication(
        name=manifest.name,
        version=manifest.version,
        sm_version=manifest.sm_version,
        digest=manifest.digest,
        signature=manifest.signature,
        ptx=request.ptx_text.encode("utf-8"),
        key_id=manifest.key_id,
        entry=manifest.entry,
        private=manifest.visibility == pb.KERNEL_VISIBILITY_PRIVATE,
    )


def _decode_offset(token: str) -> int:
    if not token:
        return 0
    try:
        if len(token) > _MAX_TOKEN_CHARS:
            raise ValueError
        offset = json.loads(base64.urlsafe_b64decode(token.encode()))["offset"]
    except (binascii.Error, ValueError, KeyError, TypeError, RecursionError):
        raise InvalidPageTokenError("page_token is malformed") from None
    if not isinstance(offset, int) or offset < 0:
        raise InvalidPageTokenError("page_token is malformed")
    return offset


def _encode_offset(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


class KernelsMixin:
    """PublishKernel, GetKernel and ListKernels (mixed into GatewayServicer)."""

    _kernels: KernelService | None

    def _tenant(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        raise NotImplementedError  # GatewayServicer's: the tenant the guard admitted

    def _kernel_service(self) -> KernelService:
        if self._kernels is None:
            raise UnimplementedError("the kernel registry is not enabled")
        return self._kernels

    async def PublishKernel(
        self,
        request: pb.PublishKernelRequest,
        context: grpc.aio.ServicerContext[pb.PublishKernelRequest, pb.PublishKernelResponse],
    ) -> pb.PublishKernelResponse:
        # Without the guard (no principal admitted) nobody may write the shared catalogue.
        principal = CURRENT_PRINCIPAL.get()
        publisher = Publisher(
            tenant=self._tenant(context),
            token_id=principal.token_id if principal is not None else "",
            may_publish_shared=principal is not None and may_publish_shared_kernels(principal),
        )
        record = await self._kernel_service().publish(publisher, publication_from_wire(request))
        return pb.PublishKernelResponse(manifest=kernel_manifest_to_wire(record))

    async def GetKernel(
        self,
        request: pb.GetKernelRequest,
        context: grpc.aio.ServicerContext[pb.GetKernelRequest, pb.GetKernelResponse],
    ) -> pb.GetKernelResponse:
        record, ptx = await self._kernel_service().get(
            self._tenant(context), request.name, request.version
        )
        return pb.GetKernelResponse(
            manifest=kernel_manifest_to_wire(record), ptx_text=ptx.decode("utf-8")
        )

    async def ListKernels(
        self,
        request: pb.ListKernelsRequest,
        context: grpc.aio.ServicerContext[pb.ListKernelsRequest, pb.ListKernelsResponse],
    ) -> pb.ListKernelsResponse:
        size = request.page_size
        page_size = DEFAULT_KERNEL_PAGE_SIZE if size <= 0 else min(size, MAX_KERNEL_PAGE_SIZE)
        start = _decode_offset(request.page_token) + max(request.offset, 0)
        records = await self._kernel_service().list_page(
            self._tenant(context), start, page_size + 1
        )
        page = records[:page_size]
        token = _encode_offset(start + page_size) if len(records) > page_size else ""
        return pb.ListKernelsResponse(
            manifests=[kernel_manifest_to_wire(r) for r in page], next_page_token=token
        )
