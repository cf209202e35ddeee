"""The original system's `tensor_wasm_*` series that mean something in the gateway, so
dashboards built for it keep working: HTTP requests by route template, method and
status, their duration, those in flight, async jobs active, streamed chunks, build info.
(The executor exports the instance and kernel-dispatch series.)"""

from __future__ import annotations

import importlib.metadata
import platform
import re
import time
from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tensorwasm_gateway.metrics import JOBS_ACTIVE

_LABELS = ["route", "method", "status"]
_PARAM = re.compile(r"\{(\w+)\}")
HTTP_REQUESTS = Counter(
    "tensor_wasm_http_requests", "HTTP responses, by route template, method and status.", _LABELS
)
HTTP_DURATION = Histogram(
    "tensor_wasm_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template, method and status.",
    _LABELS,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HTTP_IN_FLIGHT = Gauge(
    "tensor_wasm_http_requests_in_flight", "HTTP requests being answered.", ["route", "method"]
)
STREAMING_CHUNKS = Counter(
    "tensor_wasm_streaming_chunks_emitted",
    "Guest chunks (wasi:tensor emit_chunk) forwarded on /invoke-stream.",
)
JOBS_ACTIVE_COMPAT = Gauge(
    "tensor_wasm_jobs_active", "Asynchronous invocations pending or running."
)
JOBS_ACTIVE_COMPAT.set_function(JOBS_ACTIVE._value.get)
BUILD_INFO = Gauge(
    "tensor_wasm_build_info",
    "Always 1; the labels describe the build.",
    ["version", "git_sha", "rustc_version", "profile", "target"],
)
BUILD_INFO.labels(
    importlib.metadata.version("tensorwasm-gateway"),
    "",
    f"n/a (python {platform.python_version()})",
    "release",
    platform.machine(),
).set(1)
_METHODS = frozenset(
    {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT"}
)


class HttpMetrics:
    """ASGI middleware (outermost, so refusals are counted too): the HTTP series by the
    route template that matched (`/functions/:id/invoke`; `unknown` for none) and the
    response status."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self._routes = routes

    def _route_of(self, scope: Scope) -> str:
        for route in self._routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                # The original's (axum's) template syntax, as its dashboards match it.
                return _PARAM.sub(r":\1", str(getattr(route, "path", "unknown")))
        return "unknown"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._route_of(scope)
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        status = [500]
        started = time.perf_counter()

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        in_flight = HTTP_IN_FLIGHT.labels(route, method)
        in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            in_flight.dec()
            labels = (route, method, str(status[0]))
            HTTP_REQUESTS.labels(*labels).inc()
            HTTP_DURATION.labels(*labels).observe(time.perf_counter() - started)
