"""The HTTP face on real sockets, in front of a fake gateway gRPC server, both on port 0
in one background event loop."""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorwasm.common.v1 import invocation_pb2, values_pb2
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_gateway.http import ConnectionLimits, HttpFaceServer, start_http_face
from tensorwasm_gateway.http.app import FaceOptions

MAX_BODY_BYTES = 4096
LIMITS = ConnectionLimits(idle_timeout_seconds=1.0, read_timeout_seconds=1.0, max_connections=8)


class FakeGateway(pb_grpc.GatewayServiceServicer):
    """CreateFunction, GetFunction and Invoke of one function `add(i32, i32) -> i32`."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    def _record(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata() or ()})

    def _function(self, name: str) -> pb.Function:
        i32 = values_pb2.VALUE_TYPE_I32
        signature = values_pb2.FunctionSignature(params=[i32, i32], results=[i32])
        return pb.Function(
            name=name,
            tenant="default",
            module_digest="ab" * 32,
            exports=[values_pb2.ExportedFunction(name="add", signature=signature)],
        )

    async def CreateFunction(
        self, request: pb.CreateFunctionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CreateFunctionResponse:
        self._record(context)
        if request.wasm[:4] != b"\0asm":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not wasm")
        function = self._function(f"functions/{request.function_id}")
        function.config.CopyFrom(request.config)
        return pb.CreateFunctionResponse(function=function)

    async def GetFunction(
        self, request: pb.GetFunctionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetFunctionResponse:
        self._record(context)
        return pb.GetFunctionResponse(function=self._function(request.name))

    async def Invoke(
        self, request: pb.InvokeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.InvokeResponse:
        self._record(context)
        total = sum(v.i32 for v in request.args)
        success = invocation_pb2.InvocationSuccess(results=[values_pb2.Value(i32=total)])
        return pb.InvokeResponse(outcome=invocation_pb2.InvocationOutcome(success=success))


@dataclass
class Face:
    """The running face: its address, the fake behind it, and a way to run coroutines."""

    host: str
    port: int
    gateway: FakeGateway
    loop: asyncio.AbstractEventLoop
    grpc_port: int
    servers: list[Any] = field(default_factory=list)
    app: Any = None  # the Starlette app served

    def connection(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def raw(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)

    def request(
        self, method: str, path: str, body: bytes | None = None, **headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        connection = self.connection()
        try:
            connection.request(method, path, body=body, headers=headers)
            reply = connection.getresponse()
            return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
        finally:
            connection.close()


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (a socket timeout fails the test)."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


@pytest.fixture
def face(request: pytest.FixtureRequest) -> Iterator[Face]:
    """The face in front of the fake; `FaceOptions` by indirect parametrisation."""
    options = getattr(request, "param", FaceOptions())
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    gateway = FakeGateway()

    async def start() -> tuple[grpc.aio.Server, HttpFaceServer, int]:
        server = grpc.aio.server()
        pb_grpc.add_GatewayServiceServicer_to_server(gateway, server)
        health_servicer = health.aio.HealthServicer()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        grpc_port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        face = await start_http_face(
            "127.0.0.1:0",
            grpc_port,
            max_body_bytes=MAX_BODY_BYTES,
            timeout_seconds=10.0,
            signature_ttl_seconds=5.0,
            limits=LIMITS,
            shutdown_grace_seconds=1.0,
            options=options,
        )
        return server, face, grpc_port

    server, http_face, grpc_port = run(loop, start())
    host, port = http_face.address.rsplit(":", 1)
    try:
        yield Face(host, int(port), gateway, loop, grpc_port, app=http_face.app)
    finally:

        async def stop() -> None:
            await http_face.close()
            await server.stop(None)

        run(loop, stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def run(loop: asyncio.AbstractEventLoop, coroutine: Any) -> Any:
    future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, loop)
    return future.result(30)
