"""The face's ASGI application: its routes, bound explicitly, and their error handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tensorwasm_gateway.http.compat_metrics import HttpMetrics
from tensorwasm_gateway.http.errors import (
    FaceError,
    RequestRefusedError,
    on_face_error,
    on_http_exception,
    on_refused,
    on_rpc_error,
    on_unexpected,
)
from tensorwasm_gateway.http.hosts import TrustedHosts
from tensorwasm_gateway.http.kernels import KernelRoutes
from tensorwasm_gateway.http.metadata import FORWARDED, ForwardedHeaders
from tensorwasm_gateway.http.openai import OpenAiFront, on_openai_error
from tensorwasm_gateway.http.openai_documents import OpenAiError
from tensorwasm_gateway.http.openapi import serve_openapi
from tensorwasm_gateway.http.routes import HttpFace

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class FaceOptions:
    """What the face's settings choose beyond its connections (see GatewaySettings)."""

    invoke_timeout_seconds: float = 30.0
    cors_allowed_origins: tuple[str, ...] = ()
    trusted_hosts: tuple[str, ...] = ()
    openai_models: Mapping[str, str] = field(default_factory=dict)


def build_app(face: HttpFace, openai: OpenAiFront, options: FaceOptions) -> Starlette:
    """The REST routes on `face` and the OpenAI-compatible ones on `openai`; anything
    else is 404 (or 405 with `allow`). Outermost first: request and trace ids (on every
    response), CORS (when origins are allowed), the Host allowlist (when set)."""
    kernels = KernelRoutes(face)
    routes = [
        _route("GET", "/healthz", face.healthz),
        _route("GET", "/metrics", face.metrics),
        _route("GET", "/openapi.json", serve_openapi),
        _route("POST", "/functions", face.create),
        _route("DELETE", "/functions/{id}", face.delete),
        _route("POST", "/functions/{id}/invoke", face.invoke),
        _route("POST", "/functions/{id}/invoke-async", face.invoke_async),
        _route("POST", "/functions/{id}/invoke-stream", face.invoke_stream),
        _route("GET", "/jobs/{id}", face.job),
        _route("POST", "/kernels", kernels.publish),
        _route("GET", "/kernels", kernels.list),
        _route("GET", "/kernels/{name}/{version}", kernels.get),
        _route("POST", "/v1/completions", openai.completions),
        _route("POST", "/v1/chat/completions", openai.chat_completions),
    ]
    app = Starlette(
        routes=routes,
        middleware=_middleware(options, routes),
        exception_handlers={
            FaceError: on_face_error,
            OpenAiError: on_openai_error,
            RequestRefusedError: on_refused,
            grpc.aio.AioRpcError: on_rpc_error,
            HTTPException: on_http_exception,
            Exception: on_unexpected,
        },
    )
    app.router.redirect_slashes = False  # `/functions/` is no route, not a redirect
    return app


def _middleware(options: FaceOptions, routes: list[Route]) -> list[Middleware]:
    middleware = [Middleware(HttpMetrics, routes=routes), Middleware(ForwardedHeaders)]
    if options.cors_allowed_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(options.cors_allowed_origins),
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=[*FORWARDED, "content-type"],
                expose_headers=["x-request-id", "x-trace-id", "retry-after"],
            )
        )
    if options.trusted_hosts:
        middleware.append(Middleware(TrustedHosts, hosts=options.trusted_hosts))
    return middleware


def _route(method: str, path: str, endpoint: Endpoint) -> Route:
    route = Route(path, endpoint, methods=[method])
    # Starlette answers HEAD for every GET route; the face serves exactly its methods.
    if route.methods is not None:
        route.methods.discard("HEAD")
    return route
