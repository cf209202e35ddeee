"""The HTTP/JSON face: the original's REST routes, translated onto the gateway's own gRPC API.

Every route is one (or two) calls to this gateway's gRPC server over loopback, with the
caller's `authorization`, `x-tensorwasm-tenant`, `traceparent` and `x-request-id` (the
client's, else one chosen here; returned as a response header) forwarded as metadata
and `x-forwarded-for` naming the HTTP client, so the gRPC interceptors (auth, rate
limits, audit, metrics) apply to HTTP callers unchanged. gRPC errors map to the
original's `{"error": {"kind", "message"}}` envelope and statuses, with the gRPC
`code` and ErrorInfo `reason` added.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import json
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tensorwasm.common.v1 import invocation_pb2, values_pb2
from tensorwasm.common.v1.values_json import ArgumentError, to_json, to_wire
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_common.channels import REQUEST_ID_KEY, open_channel
from tensorwasm_common.settings import split_address
from tensorwasm_common.status import STATUS_DETAILS_KEY

from tensorwasm_gateway.http_server import Request, Response, start_http_server
from tensorwasm_gateway.request_ids import request_id_from

FORWARDED = ("authorization", "x-tensorwasm-tenant", "traceparent", REQUEST_ID_KEY)
_JSON = [("content-type", "application/json")]
_INVALID = grpc.StatusCode.INVALID_ARGUMENT
_FUNCTION = r"/functions/(?P<id>[^/]+)"
ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(r"/healthz"), "healthz"),
    ("GET", re.compile(r"/metrics"), "metrics"),
    ("POST", re.compile(r"/functions"), "create"),
    ("DELETE", re.compile(_FUNCTION), "delete"),
    ("POST", re.compile(_FUNCTION + r"/invoke"), "invoke"),
    ("POST", re.compile(_FUNCTION + r"/invoke-async"), "invoke_async"),
    ("POST", re.compile(_FUNCTION + r"/invoke-stream"), "invoke_stream"),
    ("GET", re.compile(r"/jobs/(?P<id>[^/]+)"), "job"),
]
# (reason or code name) -> (HTTP status, the original's error kind)
_BY_REASON = {
    "INVALID_NAME": (400, "invalid_name"),
    "INVALID_WASM": (400, "invalid_wasm"),
    "EXPORT_NOT_FOUND": (400, "missing_export"),
    "EXPORT_REQUIRED": (400, "missing_export"),
    "ARGUMENT_MISMATCH": (400, "invalid_args"),
    "INVALID_VALUE": (400, "invalid_args"),
    "UNSUPPORTED_VALUE_TYPE": (400, "invalid_args"),
    "INVALID_JSON": (400, "invalid_json"),
    "INVALID_BASE64": (400, "invalid_base64"),
    "TOO_LARGE": (413, "body_too_large"),
    "BODY_TOO_LARGE": (413, "body_too_large"),
    "INSTANCE_NOT_FOUND": (404, "instance_not_found"),
    "TENANT_CAPACITY_EXHAUSTED": (429, "tenant_capacity_exhausted"),
    "EXECUTOR_SATURATED": (503, "executor_saturated"),
    "ROUTE_NOT_FOUND": (404, "not_found"),
}
_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "bad_request"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "unauthorized"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "tenant_scope_denied"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "already_exists"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "bad_request"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limited"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "invoke_timeout"),
    grpc.StatusCode.UNAVAILABLE: (503, "unavailable"),
    grpc.StatusCode.UNIMPLEMENTED: (501, "not_implemented"),
    grpc.StatusCode.ABORTED: (409, "aborted"),
}


class FaceError(Exception):
    """An error of the HTTP face itself (before any gRPC call), with its gRPC equivalent."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def error_response(
    code: grpc.StatusCode, reason: str, message: str, retry_after_seconds: float | None = None
) -> Response:
    """The original's error envelope for a gRPC status, plus its code and reason."""
    status, kind = _BY_REASON.get(reason) or _BY_CODE.get(code, (500, "internal"))
    envelope = {"error": {"kind": kind, "message": message, "code": code.name, "reason": reason}}
    headers = list(_JSON)
    if status == 429 or retry_after_seconds is not None:
        headers.append(("retry-after", str(max(1, math.ceil(retry_after_seconds or 1)))))
    return Response(status, _dump(envelope), headers)


def error_reason(exc: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason of a failed gRPC call ("" without one)."""
    for key, value in exc.trailing_metadata() or ():
        if key != STATUS_DETAILS_KEY:
            continue
        for detail in status_pb2.Status.FromString(value).details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                return str(info.reason)
    return ""


def rpc_error_response(exc: grpc.aio.AioRpcError) -> Response:
    """The envelope for a failed gRPC call, reading its ErrorInfo and RetryInfo."""
    reason, retry = exc.code().name, None
    for key, value in exc.trailing_metadata() or ():
        if key != STATUS_DETAILS_KEY:
            continue
        for detail in status_pb2.Status.FromString(value).details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry_info = error_details_pb2.RetryInfo()
                detail.Unpack(retry_info)
                retry = retry_info.retry_delay.ToTimedelta().total_seconds()
    return error_response(exc.code(), reason, exc.details() or exc.code().name, retry)


def outcome_json(function_id: str, outcome: invocation_pb2.InvocationOutcome) -> dict[str, Any]:
    """The original's invoke result (`"ok"` for no results), plus the guest's output."""
    results = to_json(outcome.success.results)
    document: dict[str, Any] = {"function_id": function_id, "result": results or "ok"}
    if outcome.stdout or outcome.stderr:
        document["stdout"] = outcome.stdout.decode("utf-8", "replace")
        document["stderr"] = outcome.stderr.decode("utf-8", "replace")
    return document


def failure_response(function_id: str, outcome: invocation_pb2.InvocationOutcome) -> Response:
    """A guest failure as the original reports it: 504 invoke_timeout for a deadline,
    else 500 `wasmtime`; the failure's reason and trap code are in the body."""
    failure = outcome.failure
    status, kind = (
        (504, "invoke_timeout") if failure.reason == "DEADLINE_EXCEEDED" else (500, "wasmtime")
    )
    trap = invocation_pb2.TrapCode.Name(failure.trap_code) if failure.trap_code else ""
    envelope = {
        "error": {"kind": kind, "message": failure.message, "reason": failure.reason},
        "function_id": function_id,
        "failure": {"reason": failure.reason, "message": failure.message, "trap_code": trap},
    }
    return Response(status, _dump(envelope), list(_JSON))


@dataclasses.dataclass(frozen=True)
class Signatures:
    """A function's export signatures as read by GetFunction, until `expires`."""

    module_digest: str
    params: dict[str, tuple[values_pb2.ValueType.ValueType, ...]]  # export -> param types
    expires: float  # on the face's monotonic clock


# Cached signatures are keyed by (caller's credentials, tenant header, function id).
SignatureKey = tuple[str, str, str]


class HttpFace:
    """Routes HTTP requests to the gateway's gRPC API at `grpc_address`.

    A JSON invoke needs the export's signature to type its arguments. The signatures
    read by GetFunction are cached per (credentials, tenant, function id) for
    `signature_ttl_seconds` (0: no cache). A cached signature is only a guess: the
    executor checks every argument's type before the guest runs, so when the function
    was redeployed under the same name with another signature, the Invoke fails with
    ARGUMENT_MISMATCH (or the stale types do not fit the JSON arguments here); the face
    then reads the function again and retries once, only if the arguments' typing
    changed. An async invocation (checked by the executor only once it runs) always
    reads the function first.
    """

    MAX_CACHED_FUNCTIONS = 4096

    def __init__(
        self,
        channel: grpc.aio.Channel,
        *,
        timeout_seconds: float = 330.0,
        signature_ttl_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stub = pb_grpc.GatewayServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)
        self._timeout = timeout_seconds
        self._signature_ttl = signature_ttl_seconds
        self._clock = clock
        self._signatures: dict[SignatureKey, Signatures] = {}

    async def handle(self, request: Request) -> Response:
        """Answers one request (never raises for a bad request), with an `x-request-id`
        header: the client's valid one, else a new one, sent on every gRPC call the
        route makes (so the audit log names the same id)."""
        request_id = request_id_from(request.headers)
        request = dataclasses.replace(
            request,
            headers=[
                *(h for h in request.headers if h[0] != REQUEST_ID_KEY),
                (REQUEST_ID_KEY, request_id),
            ],
        )
        response = await self._route(request)
        response.headers.append((REQUEST_ID_KEY, request_id))
        return response

    async def _route(self, request: Request) -> Response:
        allowed = [m for m, pattern, _ in ROUTES if pattern.fullmatch(request.path)]
        route = next(
            (name for m, p, name in ROUTES if m == request.method and p.fullmatch(request.path)),
            None,
        )
        if route is None:
            if allowed:
                body = {"error": {"kind": "method_not_allowed", "message": "method not allowed"}}
                return Response(405, _dump(body), [*_JSON, ("allow", ", ".join(allowed))])
            return error_response(grpc.StatusCode.NOT_FOUND, "ROUTE_NOT_FOUND", "no such route")
        match = next(p.fullmatch(request.path) for m, p, n in ROUTES if n == route)
        assert match is not None
        try:
            result: Response = await getattr(self, "_" + route)(request, **match.groupdict())
            return result
        except FaceError as exc:
            return error_response(exc.code, exc.reason, exc.message)
        except grpc.aio.AioRpcError as exc:
            return rpc_error_response(exc)

    def _metadata(self, request: Request) -> list[tuple[str, str]]:
        metadata = [(name, value) for name, value in request.headers if name in FORWARDED]
        forwarded = [*request.header_values("x-forwarded-for"), request.peer]
        metadata.append(("x-forwarded-for", ", ".join(v for v in forwarded if v)))
        return metadata

    def _options(self, request: Request) -> dict[str, Any]:
        return {"metadata": self._metadata(request), "timeout": self._timeout}

    async def _healthz(self, request: Request) -> Response:
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            serving = False
        status = {"status": "ok"} if serving else {"status": "not_serving"}
        return Response(200 if serving else 503, _dump(status), list(_JSON))

    async def _metrics(self, request: Request) -> Response:
        return Response(200, generate_latest(), [("content-type", CONTENT_TYPE_LATEST)])

    async def _create(self, request: Request) -> Response:
        body = _json_object(request.body, {"name", "wasm_b64"})
        name, encoded = body.get("name"), body.get("wasm_b64")
        if not isinstance(name, str) or not name.strip():
            raise FaceError(_INVALID, "INVALID_NAME", "name is required")
        if not isinstance(encoded, str):
            raise FaceError(_INVALID, "INVALID_JSON", "wasm_b64 is required")
        try:
            wasm = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise FaceError(
                grpc.StatusCode.INVALID_ARGUMENT, "INVALID_BASE64", "wasm_b64 is not base64"
            ) from None
        reply = await self._stub.CreateFunction(
            pb.CreateFunctionRequest(function_id=name, wasm=wasm), **self._options(request)
        )
        function = reply.function
        document = {
            "id": function.name.removeprefix("functions/"),
            "name": function.name,
            "tenant": function.tenant,
            "module_digest": function.module_digest,
            "exports": [e.name for e in function.exports],
        }
        return Response(200, _dump(document), list(_JSON))

    async def _delete(self, request: Request, id: str) -> Response:
        await self._stub.DeleteFunction(
            pb.DeleteFunctionRequest(name=f"functions/{id}"), **self._options(request)
        )
        return Response(204)

    def _signature_key(self, request: Request, function_id: str) -> SignatureKey:
        credentials = hashlib.sha256((request.header("authorization") or "").encode()).hexdigest()
        return credentials, request.header("x-tensorwasm-tenant") or "", function_id

    async def _read_signatures(self, request: Request, function_id: str) -> Signatures:
        """GetFunction (the gateway authorises it as any call), cached for the TTL."""
        function = (
            await self._stub.GetFunction(
                pb.GetFunctionRequest(name=f"functions/{function_id}"), **self._options(request)
            )
        ).function
        signatures = Signatures(
            function.module_digest,
            {e.name: tuple(e.signature.params) for e in function.exports},
            self._clock() + self._signature_ttl,
        )
        if self._signature_ttl > 0:
            if len(self._signatures) >= self.MAX_CACHED_FUNCTIONS:
                self._signatures.clear()  # simple and bounded; the cache refills lazily
            self._signatures[self._signature_key(request, function_id)] = signatures
        return signatures

    def _forget_signatures(self, request: Request, function_id: str) -> None:
        self._signatures.pop(self._signature_key(request, function_id), None)

    async def _invoke_request(
        self, request: Request, function_id: str, *, fresh: bool = False
    ) -> tuple[pb.InvokeRequest, bool]:
        """The gRPC request for an InvokeRequest body `{export?, args?}`: the args are
        typed by the export's signature, read first unless cached (`fresh`: read it
        in any case). Returns the request and whether a cached signature typed it."""
        body = _json_object(request.body, None) if request.body.strip() else {}
        export, args = body.get("export") or "", body.get("args") or []
        if not isinstance(export, str) or not isinstance(args, list):
            raise FaceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "INVALID_JSON",
                "export must be a string and args an array",
            )
        cached = None if fresh else self._signatures.get(self._signature_key(request, function_id))
        if cached is not None and cached.expires <= self._clock():
            cached = None
        signatures = cached or await self._read_signatures(request, function_id)
        try:
            values = _typed_args(signatures, export, args)
        except FaceError:
            if cached is None:
                raise
            # the cached types do not fit: the function may have changed; read it again
            signatures, cached = await self._read_signatures(request, function_id), None
            values = _typed_args(signatures, export, args)
        name = f"functions/{function_id}"
        return pb.InvokeRequest(name=name, export_name=export, args=values), cached is not None

    async def _retyped(
        self, request: Request, function_id: str, sent: pb.InvokeRequest, exc: grpc.aio.AioRpcError
    ) -> pb.InvokeRequest | None:
        """After a call typed by a cached signature failed before the guest ran: the
        request typed by the function's current signature, or None when that typing is
        the same (the error stands) or the error is not a typing one."""
        self._forget_signatures(request, function_id)
        if error_reason(exc) != "ARGUMENT_MISMATCH":
            return None
        retry, _ = await self._invoke_request(request, function_id, fresh=True)
        return None if retry == sent else retry

    async def _invoke(self, request: Request, id: str) -> Response:
        invoke, cached = await self._invoke_request(request, id)
        try:
            reply = await self._stub.Invoke(invoke, **self._options(request))
        except grpc.aio.AioRpcError as exc:
            retry = await self._retyped(request, id, invoke, exc) if cached else None
            if retry is None:
                raise
            reply = await self._stub.Invoke(retry, **self._options(request))
        if reply.outcome.HasField("failure"):
            return failure_response(id, reply.outcome)
        return Response(200, _dump(outcome_json(id, reply.outcome)), list(_JSON))

    async def _invoke_async(self, request: Request, id: str) -> Response:
        invoke, _ = await self._invoke_request(request, id, fresh=True)
        request_id = request.header("idempotency-key") or ""
        reply = await self._stub.StartInvocation(
            pb.StartInvocationRequest(invocation=invoke, request_id=request_id),
            **self._options(request),
        )
        job_id = reply.invocation.name.removeprefix("invocations/")
        return Response(202, _dump({"job_id": job_id}), list(_JSON))

    async def _job(self, request: Request, id: str) -> Response:
        reply = await self._stub.GetInvocation(
            pb.GetInvocationRequest(name=f"invocations/{id}"), **self._options(request)
        )
        return Response(200, _dump(job_json(reply.invocation)), list(_JSON))

    async def _invoke_stream(self, request: Request, id: str) -> Response:
        invoke, cached = await self._invoke_request(request, id)
        call = self._stub.InvokeStream(
            pb.InvokeStreamRequest(invocation=invoke), **self._options(request)
        )
        sse = "text/event-stream" in (request.header("accept") or "")
        try:  # request errors end the call before any event: answer them as errors
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            retry = await self._retyped(request, id, invoke, exc) if cached else None
            if retry is None:
                return rpc_error_response(exc)
            call = self._stub.InvokeStream(
                pb.InvokeStreamRequest(invocation=retry), **self._options(request)
            )
            try:
                first = await call.read()
            except grpc.aio.AioRpcError as again:
                return rpc_error_response(again)
        content_type = "text/event-stream" if sse else "application/octet-stream"
        return Response(
            200, headers=[("content-type", content_type)], stream=_relay(call, first, id, sse)
        )


async def _relay(call: Any, first: Any, function_id: str, sse: bool) -> AsyncIterator[bytes]:
    """SSE frames (`event: chunk` per output chunk, then `event: end` with the result or
    `event: error`), or the raw output bytes."""
    try:
        message = first
        while message is not grpc.aio.EOF:
            if message.HasField("output"):
                chunk = message.output
                if not sse:
                    yield chunk.data
                else:
                    stream = (
                        "stderr"
                        if chunk.stream == invocation_pb2.OUTPUT_STREAM_STDERR
                        else "stdout"
                    )
                    data = {"stream": stream, "data": chunk.data.decode("utf-8", "replace")}
                    yield b"event: chunk\ndata: " + _dump(data) + b"\n\n"
            elif sse:
                outcome = message.outcome
                if outcome.HasField("failure"):
                    yield (
                        b"event: error\ndata: "
                        + failure_response(function_id, outcome).body
                        + b"\n\n"
                    )
                else:
                    yield (
                        b"event: end\ndata: " + _dump(outcome_json(function_id, outcome)) + b"\n\n"
                    )
            message = await call.read()
    except grpc.aio.AioRpcError as exc:
        if sse:
            yield b"event: error\ndata: " + rpc_error_response(exc).body + b"\n\n"
    finally:
        call.cancel()


def job_json(invocation: pb.Invocation) -> dict[str, Any]:
    """The original's JobRecord for an invocation (`state` adds our precise state)."""
    function_id = invocation.function.removeprefix("functions/")
    state = pb.InvocationState.Name(invocation.state).removeprefix("INVOCATION_STATE_").lower()
    status = {"succeeded": "completed", "failed": "failed"}.get(state, "pending")
    document: dict[str, Any] = {
        "id": invocation.name.removeprefix("invocations/"),
        "function_id": function_id,
        "tenant_id": invocation.tenant,
        "status": status,
        "state": state,
        "created_unix_ms": invocation.create_time.ToMilliseconds(),
    }
    if status == "completed":
        document["result"] = outcome_json(function_id, invocation.outcome)
    elif status == "failed":
        if invocation.HasField("error"):
            response = error_response(
                _status_code(invocation.error.code),
                invocation.error.reason,
                invocation.error.message,
            )
        else:
            response = failure_response(function_id, invocation.outcome)
        error = json.loads(response.body)["error"]
        document["result"] = {"kind": error["kind"], "message": error["message"]}
        document["reason"] = error.get("reason", "")
    return document


def _status_code(number: int) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == number), grpc.StatusCode.UNKNOWN)


def _typed_args(signatures: Signatures, export: str, args: list[Any]) -> list[Any]:
    """The JSON `args` as wire values of the chosen export's parameters ([] when the
    export is unknown: the gateway then reports it missing)."""
    chosen = export or _default_export(list(signatures.params))
    if chosen not in signatures.params:
        return []
    try:
        values: list[Any] = to_wire(args, signatures.params[chosen])
    except ArgumentError as exc:
        raise FaceError(grpc.StatusCode.INVALID_ARGUMENT, "ARGUMENT_MISMATCH", str(exc)) from None
    return values


def _default_export(names: list[str]) -> str:
    if len(names) == 1:
        return names[0]
    return "_start" if "_start" in names else ""


def _json_object(body: bytes, allowed: set[str] | None) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise FaceError(_INVALID, "INVALID_JSON", "body is not JSON") from None
    if not isinstance(document, dict):
        raise FaceError(_INVALID, "INVALID_JSON", "body must be an object")
    if allowed is not None and set(document) - allowed:
        unknown = sorted(set(document) - allowed)
        raise FaceError(_INVALID, "INVALID_JSON", f"unknown fields {unknown}")
    return document


def _dump(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


async def start_http_face(
    address: str,
    grpc_port: int,
    *,
    max_body_bytes: int,
    timeout_seconds: float,
    signature_ttl_seconds: float = 5.0,
) -> tuple[asyncio.Server, grpc.aio.Channel, str]:
    """Listens on `address` (HOST:PORT) and serves the face over a loopback channel to
    this gateway's gRPC port; returns the server, the channel and the bound address."""
    channel = open_channel(f"127.0.0.1:{grpc_port}", max_message_bytes=max_body_bytes + (1 << 20))
    face = HttpFace(
        channel, timeout_seconds=timeout_seconds, signature_ttl_seconds=signature_ttl_seconds
    )
    host, port = split_address(address)
    server = await start_http_server((host, port), face.handle, max_body_bytes=max_body_bytes)
    bound = server.sockets[0].getsockname()[1]
    return server, channel, f"{host}:{bound}"
