"""DispatcherService: proto <-> device report translation."""

from __future__ import annotations

import grpc
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2 as pb
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2_grpc as pb_grpc

from tensorwasm_dispatcher.devices import BackendKind, DeviceReport

_BACKENDS = {BackendKind.CPU: pb.BACKEND_CPU, BackendKind.CUDA: pb.BACKEND_CUDA}


class DispatcherServicer(pb_grpc.DispatcherServiceServicer):
    """Answers with the backend chosen at start."""

    def __init__(self, report: DeviceReport) -> None:
        self._report = report

    async def GetDevice(
        self, request: pb.GetDeviceRequest, context: grpc.aio.ServicerContext
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
        )
