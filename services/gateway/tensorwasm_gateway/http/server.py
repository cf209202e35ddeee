"""The face's HTTP server: uvicorn in the gateway's event loop, beside grpc.aio."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import grpc
import uvicorn
from tensorwasm_common.channels import open_channel
from tensorwasm_common.settings import split_address
from tensorwasm_common.tls import ClientTls, ReloadingSslContext, ServerTls, certificate_names

from tensorwasm_gateway.http.app import FaceOptions, build_app
from tensorwasm_gateway.http.connection import ConnectionLimits, GuardedH11Protocol
from tensorwasm_gateway.http.openai import OpenAiFront, TenantOf
from tensorwasm_gateway.http.routes import HttpFace
from tensorwasm_gateway.http.signatures import SignatureCache

MAX_HEAD_BYTES = 64 << 10
# Connections accepted per wake-up (and the listen backlog): with the connection cap,
# the face holds at most max_connections + ACCEPT_BATCH sockets at any moment.
ACCEPT_BATCH = 64
DEFAULT_OPTIONS = FaceOptions()


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handlers: the gateway owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpFaceServer:
    """The face listening on `address`, until `close`."""

    def __init__(
        self, server: uvicorn.Server, task: asyncio.Task[None], channel: grpc.aio.Channel
    ) -> None:
        self._server, self._task, self._channel = server, task, channel
        sockets = [s for srv in server.servers for s in (srv.sockets or ())]
        host, port = sockets[0].getsockname()[:2]
        self.address = f"{host}:{port}"

    @property
    def app(self) -> object:
        """The ASGI application served (the face's Starlette app)."""
        return self._server.config.app

    async def close(self) -> None:
        """Stops accepting, ends open connections and the loopback channel."""
        self._server.should_exit = True
        await self._task
        await self._channel.close()


async def start_http_face(
    address: str,
    grpc_port: int,
    *,
    max_body_bytes: int,
    timeout_seconds: float,
    signature_ttl_seconds: float,
    limits: ConnectionLimits,
    shutdown_grace_seconds: float = 5.0,
    face_secret: str = "",
    options: FaceOptions = DEFAULT_OPTIONS,
    openai_tenant_of: TenantOf = lambda _: None,
    tls: ServerTls | None = None,
    loopback_tls: ClientTls | None = None,
    reuse_port: bool = False,
) -> HttpFaceServer:
    """Listens on `address` (HOST:PORT) and serves the face over a loopback channel to
    this gateway's gRPC port (`grpc_port`); the OpenAI front maps `options.openai_models`
    (model -> function id) and acts for `openai_tenant_of(authorization values)`.

    With `tls` the face serves HTTPS only, from the gRPC server's files (client
    certificates required with a client CA; the files reload as the gRPC side's do), and
    the loopback channel is TLS with `loopback_tls`, checking the gateway's certificate
    under the first name it carries. With `reuse_port` the address is bound with
    SO_REUSEPORT, shared with the other gateway worker processes.

    Raises:
        OSError: the address cannot be bound.
    """
    target_name = ""
    if tls is not None and loopback_tls is not None:
        target_name = next(iter(certificate_names(tls.cert_file)), "")
    channel = open_channel(
        f"127.0.0.1:{grpc_port}",
        max_message_bytes=max_body_bytes + (1 << 20),
        tls=loopback_tls,
        target_name=target_name,
    )
    face = HttpFace(
        channel,
        SignatureCache(signature_ttl_seconds),
        timeout_seconds=timeout_seconds,
        invoke_timeout_seconds=options.invoke_timeout_seconds,
        max_body_bytes=max_body_bytes,
        face_secret=face_secret,
    )
    host, port = split_address(address)
    listener = socket.create_server((host, port), backlog=ACCEPT_BATCH, reuse_port=reuse_port)
    config = uvicorn.Config(
        build_app(face, OpenAiFront(face, options.openai_models, openai_tenant_of), options),
        http=GuardedH11Protocol.with_limits(limits),
        lifespan="off",
        log_config=None,
        access_log=False,  # the gRPC side audits every call
        proxy_headers=False,  # the client is the peer; x-forwarded-for is forwarded as sent
        server_header=False,
        date_header=False,
        backlog=ACCEPT_BATCH,
        timeout_graceful_shutdown=max(1, round(shutdown_grace_seconds)),
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
    )
    if tls is not None:
        config.load()
        config.ssl = ReloadingSslContext(tls).context
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:
        if task.done():
            await task  # raises what stopped it
            raise OSError(f"the HTTP face on {address} stopped while starting")
        await asyncio.sleep(0.01)
    return HttpFaceServer(server, task, channel)
