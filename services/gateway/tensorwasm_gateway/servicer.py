"""GatewayService: proto <-> domain translation (functions, instances, invocations)."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
from tensorwasm.common.v1 import invocation_pb2
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_common.call_args import check_call
from tensorwasm_common.channels import TENANT_METADATA_KEY
from tensorwasm_common.durations import duration_seconds
from tensorwasm_common.errors import (
    InvalidArgumentError,
    InvalidNameError,
    InvalidPageTokenError,
    UnimplementedError,
)
from tensorwasm_common.tenants import DEFAULT_TENANT

from tensorwasm_gateway.access import CURRENT_TENANT, validate_tenant
from tensorwasm_gateway.calls import Call, CallResult
from tensorwasm_gateway.functions import (
    FunctionRecord,
    FunctionService,
    ModuleUpload,
    UploadHeader,
    empty_part,
    function_id_from_name,
    no_header,
    second_header,
)
from tensorwasm_gateway.instances import (
    InstanceRecord,
    InstanceService,
    InstanceSnapshotService,
    InstanceSpec,
    SnapshotInfo,
    instance_id_from_name,
)
from tensorwasm_gateway.invocations import (
    InvocationRecord,
    InvocationService,
    invocation_id_from_name,
)
from tensorwasm_gateway.kernels import KernelService
from tensorwasm_gateway.kernels.servicer import KernelsMixin
from tensorwasm_gateway.limits import limits_from_wire
from tensorwasm_gateway.wire import call_from_wire, exports_to_wire, function_config_from_wire

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_PAGE_TOKEN_CHARS = 512


def tenant_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The tenant the guard admitted the call for; else the metadata's, or the default."""
    admitted = CURRENT_TENANT.get()
    if admitted is not None:
        return admitted
    for key, value in context.invocation_metadata() or ():
        if key == TENANT_METADATA_KEY:
            return validate_tenant(str(value))
    return DEFAULT_TENANT


def function_to_wire(record: FunctionRecord) -> pb.Function:
    """The function resource on the wire."""
    function = pb.Function(
        name=f"functions/{record.function_id}",
        tenant=record.tenant,
        module_digest=record.module_digest,
        module_size_bytes=record.module_size_bytes,
        exports=exports_to_wire(record.exports),
    )
    function.create_time.FromNanoseconds(record.create_time_ns)
    function.config.CopyFrom(pb.FunctionConfig.FromString(record.config))  # kept as on the wire
    return function


def upload_header(header: pb.UploadFunctionHeader) -> UploadHeader:
    """The typed header of an UploadFunction stream."""
    return UploadHeader(
        function_id=header.function_id,
        config=function_config_from_wire(header.config),
        size_bytes=header.module_size_bytes,
        digest=header.module_digest,
    )


def instance_to_wire(record: InstanceRecord) -> pb.Instance:
    """The instance resource on the wire."""
    instance = pb.Instance(
        name=f"instances/{record.instance_id}",
        function=f"functions/{record.function_id}",
        tenant=record.tenant,
    )
    instance.create_time.FromNanoseconds(record.create_time_ns)
    instance.idle_ttl.FromNanoseconds(record.idle_ttl_ns)
    return instance


def invocation_to_wire(record: InvocationRecord) -> pb.Invocation:
    """The invocation resource on the wire."""
    invocation = pb.Invocation(
        name=f"invocations/{record.invocation_id}",
        function=f"functions/{record.function_id}",
        tenant=record.tenant,
        export_name=record.export_name,
        state=pb.InvocationState.ValueType(record.state),
        request_id=record.request_id or "",
    )
    invocation.create_time.FromNanoseconds(record.create_time_ns)
    if record.outcome:
        invocation.outcome.ParseFromString(record.outcome)
    if record.error:
        invocation.error.ParseFromString(record.error)
    if record.end_time_ns is not None:
        invocation.end_time.FromNanoseconds(record.end_time_ns)
    if record.expire_time_ns is not None:
        invocation.expire_time.FromNanoseconds(record.expire_time_ns)
    return invocation


def page_size_of(requested: int) -> int:
    """The page size of a List call: the default when unset or negative, else capped."""
    return DEFAULT_PAGE_SIZE if requested <= 0 else min(requested, MAX_PAGE_SIZE)


def encode_page_token(last_id: str) -> str:
    """An opaque token that resumes listing after `last_id`."""
    return base64.urlsafe_b64encode(json.dumps({"after": last_id}).encode()).decode()


def decode_page_token(token: str) -> str:
    """The id to resume after; InvalidPageTokenError when the token is not ours."""
    if not token:
        return ""
    if len(token) > MAX_PAGE_TOKEN_CHARS:
        raise InvalidPageTokenError("page_token is malformed")
    try:
        after = json.loads(base64.urlsafe_b64decode(token.encode()))["after"]
    except (binascii.Error, ValueError, KeyError, TypeError, RecursionError):
        raise InvalidPageTokenError("page_token is malformed") from None
    if not isinstance(after, str):
        raise InvalidPageTokenError("page_token is malformed")
    return after


class InvocationsMixin:
    """StartInvocation, GetInvocation and ListInvocations (mixed into GatewayServicer)."""

    _invocations: InvocationService | None

    def _service(self) -> InvocationService:
        if self._invocations is None:
            raise UnimplementedError("async invocations are not enabled")
        return self._invocations

    async def StartInvocation(
        self,
        request: pb.StartInvocationRequest,
        context: grpc.aio.ServicerContext[pb.StartInvocationRequest, pb.StartInvocationResponse],
    ) -> pb.StartInvocationResponse:
        tenant = tenant_of(context)
        invocation = request.invocation
        record = await self._service().start(
            tenant,
            function_id_from_name(invocation.name),
            call_from_wire(invocation),
            request.request_id,
        )
        return pb.StartInvocationResponse(invocation=invocation_to_wire(record))

    async def GetInvocation(
        self,
        request: pb.GetInvocationRequest,
        context: grpc.aio.ServicerContext[pb.GetInvocationRequest, pb.GetInvocationResponse],
    ) -> pb.GetInvocationResponse:
        tenant = tenant_of(context)
        record = await self._service().get(tenant, invocation_id_from_name(request.name))
        return pb.GetInvocationResponse(invocation=invocation_to_wire(record))

    async def ListInvocations(
        self,
        request: pb.ListInvocationsRequest,
        context: grpc.aio.ServicerContext[pb.ListInvocationsRequest, pb.ListInvocationsResponse],
    ) -> pb.ListInvocationsResponse:
        tenant = tenant_of(context)
        page_size = page_size_of(request.page_size)
        after = decode_page_token(request.page_token)
        records = await self._service().list_page(tenant, after, page_size + 1)
        page = records[:page_size]
        token = encode_page_token(page[-1].invocation_id) if len(records) > page_size else ""
        return pb.ListInvocationsResponse(
            invocations=[invocation_to_wire(r) for r in page], next_page_token=token
        )


class GatewayServicer(InvocationsMixin, KernelsMixin, pb_grpc.GatewayServiceServicer):
    """The public API."""

    def __init__(
        self,
        functions: FunctionService,
        invocations: InvocationService | None = None,
        instances: InstanceService | None = None,
        kernels: KernelService | None = None,
    ) -> None:
        self._functions = functions
        self._invocations = invocations
        self._instances_service = instances
        self._kernels = kernels

    def _tenant(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        return tenant_of(context)

    def _instances(self) -> InstanceService:
        if self._instances_service is None:
            raise UnimplementedError("instances are not enabled")
        return self._instances_service

    async def CreateFunction(
        self,
        request: pb.CreateFunctionRequest,
        context: grpc.aio.ServicerContext[pb.CreateFunctionRequest, pb.CreateFunctionResponse],
    ) -> pb.CreateFunctionResponse:
        config = function_config_from_wire(request.config)
        record = await self._functions.create(
            tenant_of(context), request.function_id, request.wasm, config
        )
        return pb.CreateFunctionResponse(function=function_to_wire(record))

    async def UploadFunction(
        self,
        request_iterator: AsyncIterator[pb.UploadFunctionRequest],
        context: grpc.aio.ServicerContext[pb.UploadFunctionRequest, pb.UploadFunctionResponse],
    ) -> pb.UploadFunctionResponse:
        tenant = tenant_of(context)
        upload: ModuleUpload | None = None
        async for message in request_iterator:
            part = message.WhichOneof("part")
            if upload is None:
                if part != "header":
                    raise no_header()
                upload = await self._functions.begin_upload(tenant, upload_header(message.header))
            elif part == "chunk":
                upload.add_chunk(message.chunk)
            elif part == "trailer":
                upload.add_trailer(message.trailer.module_digest)
            else:
                raise second_header() if part == "header" else empty_part()
        if upload is None:
            raise no_header()
        wasm = upload.finish()
        header = upload.header
        record = await self._functions.create(tenant, header.function_id, wasm, header.config)
        return pb.UploadFunctionResponse(function=function_to_wire(record))

    async def GetFunction(
        self,
        request: pb.GetFunctionRequest,
        context: grpc.aio.ServicerContext[pb.GetFunctionRequest, pb.GetFunctionResponse],
    ) -> pb.GetFunctionResponse:
        tenant = tenant_of(context)
        record = await self._functions.get(tenant, function_id_from_name(request.name))
        return pb.GetFunctionResponse(function=function_to_wire(record))

    async def ListFunctions(
        self,
        request: pb.ListFunctionsRequest,
        context: grpc.aio.ServicerContext[pb.ListFunctionsRequest, pb.ListFunctionsResponse],
    ) -> pb.ListFunctionsResponse:
        tenant = tenant_of(context)
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        if page_size < 0:
            page_size = DEFAULT_PAGE_SIZE
        after = decode_page_token(request.page_token)
        records = await self._functions.list_page(tenant, after, page_size + 1)
        page = records[:page_size]
        token = encode_page_token(page[-1].function_id) if len(records) > page_size else ""
        return pb.ListFunctionsResponse(
            functions=[function_to_wire(r) for r in page], next_page_token=token
        )

    async def DeleteFunction(
        self,
        request: pb.DeleteFunctionRequest,
        context: grpc.aio.ServicerContext[pb.DeleteFunctionRequest, pb.DeleteFunctionResponse],
    ) -> pb.DeleteFunctionResponse:
        tenant = tenant_of(context)
        await self._functions.delete(tenant, function_id_from_name(request.name))
        return pb.DeleteFunctionResponse()

    async def Invoke(
        self,
        request: pb.InvokeRequest,
        context: grpc.aio.ServicerContext[pb.InvokeRequest, pb.InvokeResponse],
    ) -> pb.InvokeResponse:
        tenant = tenant_of(context)
        function_id = function_id_from_name(request.name)
        result, export = await self._functions.invoke(tenant, function_id, call_from_wire(request))
        return pb.InvokeResponse(outcome=_outcome(result), export_name=export)

    async def InvokeStream(
        self,
        request: pb.InvokeStreamRequest,
        context: grpc.aio.ServicerContext[pb.InvokeStreamRequest, pb.InvokeStreamResponse],
    ) -> AsyncIterator[pb.InvokeStreamResponse]:
        """Relays the executor's events; a cancelled call cancels the executor's call.

        The downstream call is iterated inside this handler, so a client cancel (which
        cancels this task) unwinds into it and cancels it; the done callback cancels it
        as well whenever this RPC ends, however the handler was left.
        """
        tenant = tenant_of(context)
        invocation = request.invocation
        function_id = function_id_from_name(invocation.name)
        events, export = await self._functions.invoke_stream(
            tenant, function_id, call_from_wire(invocation)
        )
        context.add_done_callback(lambda _: events.cancel())  # type: ignore[arg-type]  # stubs: _DoneCallback is no Protocol
        async for event in events:
            kind = event.WhichOneof("event")
            if kind == "outcome":
                yield pb.InvokeStreamResponse(outcome=event.outcome, export_name=export)
            elif kind == "chunk":
                yield pb.InvokeStreamResponse(chunk=event.chunk)
            else:
                yield pb.InvokeStreamResponse(output=event.output)

    async def CreateInstance(
        self,
        request: pb.CreateInstanceRequest,
        context: grpc.aio.ServicerContext[pb.CreateInstanceRequest, pb.CreateInstanceResponse],
    ) -> pb.CreateInstanceResponse:
        tenant = tenant_of(context)
        function_id = function_id_from_name(request.function)
        if request.HasField("idle_ttl"):
            duration_seconds(request.idle_ttl, "idle_ttl")  # refused here, named, if invalid
        spec = InstanceSpec(
            stdin=request.stdin,
            limits=limits_from_wire(request.limits),
            idle_ttl_ns=request.idle_ttl.ToNanoseconds() if request.HasField("idle_ttl") else None,
            input=request.input,
        )
        record, result = await self._instances().create(tenant, function_id, spec)
        reply = pb.CreateInstanceResponse(outcome=_outcome(result))
        if record is not None:
            reply.instance.CopyFrom(instance_to_wire(record))
        return reply

    async def GetInstance(
        self,
        request: pb.GetInstanceRequest,
        context: grpc.aio.ServicerContext[pb.GetInstanceRequest, pb.GetInstanceResponse],
    ) -> pb.GetInstanceResponse:
        tenant = tenant_of(context)
        record = await self._instances().get(tenant, instance_id_from_name(request.name))
        return pb.GetInstanceResponse(instance=instance_to_wire(record))

    async def ListInstances(
        self,
        request: pb.ListInstancesRequest,
        context: grpc.aio.ServicerContext[pb.ListInstancesRequest, pb.ListInstancesResponse],
    ) -> pb.ListInstancesResponse:
        tenant = tenant_of(context)
        page_size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        if page_size < 0:
            page_size = DEFAULT_PAGE_SIZE
        after = decode_page_token(request.page_token)
        records = await self._instances().list_page(tenant, after, page_size + 1)
        page = records[:page_size]
        token = encode_page_token(page[-1].instance_id) if len(records) > page_size else ""
        return pb.ListInstancesResponse(
            instances=[instance_to_wire(r) for r in page], next_page_token=token
        )

    async def CallInstance(
        self,
        request: pb.CallInstanceRequest,
        context: grpc.aio.ServicerContext[pb.CallInstanceRequest, pb.CallInstanceResponse],
    ) -> pb.CallInstanceResponse:
        tenant = tenant_of(context)
        instance_id = instance_id_from_name(request.name)
        check_call(request.export_name, request.args)
        call = Call(
            export_name=request.export_name,
            args=request.args,
            limits=limits_from_wire(request.limits),
            input=request.input,
        )
        result, export = await self._instances().call(tenant, instance_id, call)
        return pb.CallInstanceResponse(outcome=_outcome(result), export_name=export)

    async def DeleteInstance(
        self,
        request: pb.DeleteInstanceRequest,
        context: grpc.aio.ServicerContext[pb.DeleteInstanceRequest, pb.DeleteInstanceResponse],
    ) -> pb.DeleteInstanceResponse:
        tenant = tenant_of(context)
        await self._instances().delete(tenant, instance_id_from_name(request.name))
        return pb.DeleteInstanceResponse()

    # --- instance snapshots ---

    def _snapshots(self) -> InstanceSnapshotService:
        snapshots = self._instances().snapshots
        if snapshots is None:
            raise UnimplementedError("instance snapshots are not enabled")
        return snapshots

    async def SnapshotInstance(
        self,
        request: pb.SnapshotInstanceRequest,
        context: grpc.aio.ServicerContext[pb.SnapshotInstanceRequest, pb.SnapshotInstanceResponse],
    ) -> pb.SnapshotInstanceResponse:
        tenant = tenant_of(context)
        instance_id = instance_id_from_name(request.name)
        info = await self._snapshots().snapshot(
            tenant, instance_id, _non_negative(request.max_restore_bytes, "max_restore_bytes")
        )
        return pb.SnapshotInstanceResponse(snapshot=snapshot_to_wire(info))

    async def RestoreInstance(
        self,
        request: pb.RestoreInstanceRequest,
        context: grpc.aio.ServicerContext[pb.RestoreInstanceRequest, pb.RestoreInstanceResponse],
    ) -> pb.RestoreInstanceResponse:
        tenant = tenant_of(context)
        snapshot_id = snapshot_id_from_name(request.snapshot)
        function_id = function_id_from_name(request.function) if request.function else ""
        if request.HasField("idle_ttl"):
            duration_seconds(request.idle_ttl, "idle_ttl")  # refused here, named, if invalid
        record, info = await self._snapshots().restore(
            tenant,
            snapshot_id,
            function_id=function_id,
            idle_ttl_ns=request.idle_ttl.ToNanoseconds() if request.HasField("idle_ttl") else None,
            max_restore_bytes=_non_negative(request.max_restore_bytes, "max_restore_bytes"),
            require_signature=request.require_signature,
        )
        return pb.RestoreInstanceResponse(
            instance=instance_to_wire(record), snapshot=snapshot_to_wire(info)
        )

    async def ExportSnapshot(
        self,
        request: pb.ExportSnapshotRequest,
        context: grpc.aio.ServicerContext[pb.ExportSnapshotRequest, pb.ExportSnapshotResponse],
    ) -> AsyncIterator[pb.ExportSnapshotResponse]:
        tenant = tenant_of(context)
        info, chunks = await self._snapshots().export(tenant, snapshot_id_from_name(request.name))
        first = True
        async for chunk in chunks:
            if first:
                yield pb.ExportSnapshotResponse(snapshot=snapshot_to_wire(info), chunk=chunk)
                first = False
            else:
                yield pb.ExportSnapshotResponse(chunk=chunk)

    async def ImportSnapshot(
        self,
        request_iterator: AsyncIterator[pb.ImportSnapshotRequest],
        context: grpc.aio.ServicerContext[pb.ImportSnapshotRequest, pb.ImportSnapshotResponse],
    ) -> pb.ImportSnapshotResponse:
        tenant = tenant_of(context)
        iterator = request_iterator.__aiter__()
        first = await anext(iterator, None)
        if first is None or first.WhichOneof("part") != "header":
            raise no_header()
        header = first.header

        async def chunks() -> AsyncIterator[bytes]:
            async for message in iterator:
                if message.WhichOneof("part") != "chunk":
                    raise second_header()
                yield message.chunk

        info = await self._snapshots().import_file(
            tenant,
            chunks(),
            size_bytes=header.size_bytes,
            max_restore_bytes=_non_negative(header.max_restore_bytes, "max_restore_bytes"),
            require_signature=header.require_signature,
        )
        return pb.ImportSnapshotResponse(snapshot=snapshot_to_wire(info))


def _outcome(result: CallResult) -> invocation_pb2.InvocationOutcome:
    """The executor's outcome the domain relayed (see `tensorwasm_gateway.calls`)."""
    outcome = result.outcome
    assert isinstance(outcome, invocation_pb2.InvocationOutcome)
    return outcome


SNAPSHOT_ID = re.compile(r"snap_[0-9a-f]{32}")


def snapshot_id_from_name(name: str) -> str:
    """`snapshots/{id}` -> id, validating the pattern."""
    prefix, _, snapshot_id = name.partition("/")
    if prefix != "snapshots" or not SNAPSHOT_ID.fullmatch(snapshot_id):
        raise InvalidNameError(
            "name must be snapshots/{id} with id snap_ + 32 lowercase hex digits",
            metadata={"name": name[:200]},
        )
    return snapshot_id


def snapshot_to_wire(info: SnapshotInfo) -> pb.InstanceSnapshot:
    """The instance snapshot resource on the wire."""
    snapshot = pb.InstanceSnapshot(
        name=f"snapshots/{info.snapshot_id}",
        function=f"functions/{info.function_id}",
        instance=f"instances/{info.instance_id}",
        module_digest=info.module_digest,
        state_size_bytes=info.state_size_bytes,
        record_size_bytes=info.record_size_bytes,
        signed=info.signed,
    )
    snapshot.create_time.FromNanoseconds(info.create_time_ns)
    return snapshot


def _non_negative(value: int, field: str) -> int:
    if value < 0:
        raise InvalidArgumentError(f"{field} must be >= 0", metadata={"field": field})
    return value
