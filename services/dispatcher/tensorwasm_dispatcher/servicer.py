"""DispatcherService: proto <-> domain translation; batches go through the `BatchIntake`."""

from __future__ import annotations

import datetime
from typing import Any

import grpc
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2 as pb
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2_grpc as pb_grpc
from tensorwasm_common.channels import TENANT_METADATA_KEY
from tensorwasm_common.gpu_abi import ArgTag, BufferRef, ScalarArg
from tensorwasm_common.gpu_batch import (
    AllocBuffer,
    Batch,
    BatchResult,
    Command,
    DeviceBufferRef,
    FreeBuffer,
    KernelArg,
    LaunchKernel,
    LoadKernel,
    ReadBuffer,
    StagedRegion,
    WriteBuffer,
)
from tensorwasm_common.tenants import DEFAULT_TENANT

from tensorwasm_dispatcher.backends import BackendKind, DeviceReport
from tensorwasm_dispatcher.errors import InvalidBatchError, TenantMismatchError
from tensorwasm_dispatcher.intake import BatchIntake
from tensorwasm_dispatcher.workers.placement import Topology

_BACKENDS = {BackendKind.CPU: pb.BACKEND_CPU, BackendKind.CUDA: pb.BACKEND_CUDA}
_SCALAR_FIELDS = {
    "i32": ArgTag.I32,
    "i64": ArgTag.I64,
    "f32_bits": ArgTag.F32,
    "f64_bits": ArgTag.F64,
    "u32": ArgTag.U32,
    "u64": ArgTag.U64,
}


class DispatcherServicer(pb_grpc.DispatcherServiceServicer):
    """Reports the device, runs batches (admitted first) and reports tenants' usage."""

    def __init__(
        self,
        report: DeviceReport,
        intake: BatchIntake,
        *,
        isolation: str = "off",
        topology: Topology | None = None,
    ) -> None:
        self._report = report
        self._intake = intake
        self._isolation = isolation
        self._topology = topology or Topology()

    async def GetDevice(
        self,
        request: pb.GetDeviceRequest,
        context: grpc.aio.ServicerContext[pb.GetDeviceRequest, pb.GetDeviceResponse],
    ) -> pb.GetDeviceResponse:
        report = self._report
        return pb.GetDeviceResponse(
            backend=_BACKENDS[report.backend],
            devices=[
                pb.Device(
                    ordinal=device.ordinal,
                    name=device.name,
                    compute_capability_major=device.compute_capability[0],
                    compute_capability_minor=device.compute_capability[1],
                    total_memory_bytes=device.total_memory_bytes,
                )
                for device in report.devices
            ],
            driver_version=report.driver_version,
            fallback_reason=report.fallback_reason,
            worker_isolation=self._isolation,
            mps_active=self._topology.mps,
            mig_instances=[
                pb.MigInstance(gpu=m.gpu, index=m.index, profile=m.profile, uuid=m.uuid)
                for m in self._topology.mig
            ],
        )

    async def Execute(
        self,
        request: pb.ExecuteRequest,
        context: grpc.aio.ServicerContext[pb.ExecuteRequest, pb.ExecuteResponse],
    ) -> pb.ExecuteResponse:
        """Runs the batch through the intake (admitted, or refused at once)."""
        tenant = _tenant(request.tenant, context)
        result = await self._intake.execute(
            tenant, batch_from_wire(request), context.time_remaining()
        )
        return result_to_wire(result)

    async def GetTenantUsage(
        self,
        request: pb.GetTenantUsageRequest,
        context: grpc.aio.ServicerContext[pb.GetTenantUsageRequest, pb.GetTenantUsageResponse],
    ) -> pb.GetTenantUsageResponse:
        usage = self._intake.usage(_tenant(request.tenant, context))
        response = pb.GetTenantUsageResponse(
            tenant=usage.tenant,
            staged_bytes_total=usage.staged_bytes_total,
            staged_bytes_current=usage.staged_bytes_current,
            staged_bytes_peak=usage.staged_bytes_peak,
            memory_quota_bytes=usage.memory_quota_bytes,
            launches=usage.launches,
            loads=usage.loads,
            failed_commands=usage.failed_commands,
            execute_requests=usage.execute_requests,
            rejected_requests=usage.rejected_requests,
            open_sessions=usage.open_sessions,
            queued_requests=self._intake.queued(usage.tenant),
            device_buffers=usage.device_buffers,
            device_buffer_bytes=usage.device_buffer_bytes,
        )
        response.kernel_time.FromTimedelta(datetime.timedelta(seconds=usage.kernel_seconds))
        return response


def _tenant(field: str, context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The request's tenant: the field, else the metadata, else the default tenant."""
    metadata = dict(context.invocation_metadata() or ())
    header = metadata.get(TENANT_METADATA_KEY, "")
    if field and header and field != header:
        raise TenantMismatchError(
            "the tenant field and the x-tensorwasm-tenant metadata differ",
            metadata={"field": "tenant"},
        )
    return field or str(header) or DEFAULT_TENANT


def batch_from_wire(request: pb.ExecuteRequest) -> Batch:
    """The domain batch of an ExecuteRequest.

    Raises:
        InvalidBatchError: a command or an argument has no value set.
    """
    regions = tuple(
        StagedRegion(
            buffer_id=buffer.buffer_id,
            data=buffer.data,
            guest_offset=buffer.guest_offset,
            copy_back=buffer.copy_back,
        )
        for buffer in request.buffers
    )
    # A batch's launches mostly repeat one launch: each distinct one is converted once
    # (keyed by its serialized bytes; the commands are immutable, so they can be shared).
    launches: dict[bytes, Command] = {}
    commands: list[Command] = []
    for index, command in enumerate(request.commands):
        if command.HasField("launch"):
            key = command.launch.SerializeToString(deterministic=True)
            found = launches.get(key)
            if found is None:
                found = launches[key] = _command_from_wire(command, index)
            commands.append(found)
        else:
            commands.append(_command_from_wire(command, index))
    return Batch(request.session_id, regions, tuple(commands), request.end_session)


def _command_from_wire(command: pb.Command, index: int) -> Command:
    kind = command.WhichOneof("command")
    if kind == "load":
        load = command.load
        return LoadKernel(load.kernel_id, load.ptx, load.entry, load.expected_ptx_digest)
    if kind == "launch":
        launch = command.launch
        return LaunchKernel(
            kernel_id=launch.kernel_id,
            grid=(launch.grid.x, launch.grid.y, launch.grid.z),
            block=(launch.block.x, launch.block.y, launch.block.z),
            shared_mem_bytes=launch.shared_mem_bytes,
            args=tuple(_arg_from_wire(arg, index) for arg in launch.args),
        )
    if kind == "alloc_buffer":
        return AllocBuffer(command.alloc_buffer.handle, command.alloc_buffer.size_bytes)
    if kind == "free_buffer":
        return FreeBuffer(command.free_buffer.handle)
    if kind == "write_buffer":
        write = command.write_buffer
        return WriteBuffer(write.handle, write.offset_bytes, write.data)
    if kind == "read_buffer":
        read = command.read_buffer
        return ReadBuffer(read.handle, read.offset_bytes, read.length_bytes)
    raise InvalidBatchError(
        f"command {index} has no command set", metadata={"field": f"commands[{index}]"}
    )


def _arg_from_wire(arg: pb.KernelArg, index: int) -> KernelArg:
    kind = arg.WhichOneof("value")
    if kind == "buffer":
        ref = arg.buffer
        return BufferRef(ref.buffer_id, ref.offset_bytes, ref.length_bytes)
    if kind == "device_buffer":
        return DeviceBufferRef(arg.device_buffer.handle, arg.device_buffer.offset_bytes)
    if kind is None:
        raise InvalidBatchError(
            f"command {index} has an argument without a value",
            metadata={"field": f"commands[{index}].launch.args"},
        )
    return ScalarArg(_SCALAR_FIELDS[kind], int(getattr(arg, kind)))


def result_to_wire(result: BatchResult) -> pb.ExecuteResponse:
    """The ExecuteResponse of a batch's result."""
    response = pb.ExecuteResponse(
        results=[
            pb.CommandResult(abi_code=r.code, message=r.message, data=r.data)
            for r in result.results
        ],
        buffers=[
            pb.BufferData(buffer_id=buffer_id, data=data)
            for buffer_id, data in result.buffers.items()
        ],
    )
    response.kernel_time.FromTimedelta(datetime.timedelta(seconds=result.kernel_seconds))
    response.tenant_kernel_time.FromTimedelta(
        datetime.timedelta(seconds=result.tenant_kernel_seconds)
    )
    return response
