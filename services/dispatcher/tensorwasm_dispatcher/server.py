"""Builds and runs the dispatcher server."""

from __future__ import annotations

import logging

from tensorwasm.dispatcher.v1 import dispatcher_service_pb2 as pb
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2_grpc as pb_grpc
from tensorwasm_common.bootstrap import ServiceHost, create_host, serve_forever

from tensorwasm_dispatcher.devices import discover
from tensorwasm_dispatcher.servicer import DispatcherServicer
from tensorwasm_dispatcher.settings import DispatcherSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DispatcherService"].full_name
_log = logging.getLogger(__name__)


def build_server(settings: DispatcherSettings) -> ServiceHost:
    """Discovers the devices (cuda, else cpu) and registers the servicer."""
    report = discover(settings.backend)
    _log.info(
        "backend selected",
        extra={"backend": report.backend.value, "fallback_reason": report.fallback_reason},
    )
    host = create_host("dispatcher", settings, [SERVICE_NAME])
    pb_grpc.add_DispatcherServiceServicer_to_server(DispatcherServicer(report), host.server)
    return host


async def serve(settings: DispatcherSettings) -> None:
    """Serves until SIGTERM."""
    await serve_forever(build_server(settings))
