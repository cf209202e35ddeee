"""What an HTTP request carries into its gRPC calls: forwarded headers, its request id
and its trace.

The caller's `authorization`, `x-tensorwasm-tenant`, `traceparent` and `x-request-id`
(the client's valid one, else one chosen here; returned as a response header) are sent
as metadata, with `x-forwarded-for` naming the HTTP client, so the gRPC interceptors
(auth, rate limits, audit, metrics) apply to HTTP callers unchanged. Every request has a
trace: the caller's valid W3C `traceparent`, else a new one sent on its gRPC calls; its
trace id is returned as `x-trace-id` on every response.
"""

from __future__ import annotations

import re
import secrets

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from tensorwasm_common.channels import REQUEST_ID_KEY

from tensorwasm_gateway.http.errors import JSON_TYPE, refusal_body
from tensorwasm_gateway.http.signatures import SignatureKey, signature_key
from tensorwasm_gateway.request_ids import request_id_from

FORWARDED = ("authorization", "x-tensorwasm-tenant", "traceparent")
_FORWARDED_FOR = "x-forwarded-for"
TRACE_ID_HEADER = "x-trace-id"
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
# gRPC metadata values are printable ASCII; anything else cannot be forwarded.
_PRINTABLE = re.compile(r"[\x20-\x7e]*")


def call_metadata(request: Request) -> list[tuple[str, str]]:
    """The metadata of a gRPC call made for `request`."""
    metadata = [
        (name, value)
        for name, value in _headers(request.scope)
        if name in FORWARDED and name != "traceparent"
    ]
    metadata.append(("traceparent", request.state.traceparent))
    metadata.append((REQUEST_ID_KEY, request.state.request_id))
    forwarded = [*request.headers.getlist(_FORWARDED_FOR), _peer(request)]
    metadata.append((_FORWARDED_FOR, ", ".join(v for v in forwarded if v)))
    return metadata


def signature_key_of(request: Request, function_id: str) -> SignatureKey:
    """The signature cache's key for this caller's view of `function_id`."""
    headers = request.headers
    return signature_key(
        headers.get("authorization", ""), headers.get("x-tensorwasm-tenant", ""), function_id
    )


class ForwardedHeaders:
    """ASGI middleware: chooses each request's id (returned as `x-request-id`) and
    answers 400 when a header to forward is not printable ASCII."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        request_id = request_id_from(headers)
        traceparent = _traceparent(headers)
        state = scope.setdefault("state", {})
        state["request_id"], state["traceparent"] = request_id, traceparent
        trace_id = traceparent.split("-")[1]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                response_headers.append(REQUEST_ID_KEY, request_id)
                response_headers.append(TRACE_ID_HEADER, trace_id)
            await send(message)

        unfit = next(
            (
                name
                for name, value in headers
                if name in (*FORWARDED, _FORWARDED_FOR) and not _PRINTABLE.fullmatch(value)
            ),
            None,
        )
        if unfit is None:
            await self.app(scope, receive, send_with_id)
            return
        body = refusal_body("bad_request", f"header {unfit} is not printable ASCII")
        await send_with_id(
            {
                "type": "http.response.start",
                "status": 400,
                "headers": [
                    (b"content-type", JSON_TYPE.encode()),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send_with_id({"type": "http.response.body", "body": body})


def _traceparent(headers: list[tuple[str, str]]) -> str:
    """The caller's valid `traceparent` (one, with non-zero ids), else a new sampled one."""
    sent = [value.strip() for name, value in headers if name == "traceparent"]
    match = _TRACEPARENT.fullmatch(sent[0]) if len(sent) == 1 else None
    if match and sent[0][:2] != "ff" and set(match[1]) != {"0"} and set(match[2]) != {"0"}:
        return sent[0]
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def _headers(scope: Scope) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]


def _peer(request: Request) -> str:
    return request.client.host if request.client else ""
