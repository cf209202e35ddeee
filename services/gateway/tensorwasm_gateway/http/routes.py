"""The face's routes: each one or two calls to the gateway's own gRPC API over loopback."""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_common.errors import Reason

from tensorwasm_gateway.access.proxies import FACE_PROOF_KEY
from tensorwasm_gateway.http import documents
from tensorwasm_gateway.http.errors import (
    FaceError,
    RequestRefusedError,
    error_reason,
    failure_response,
    json_response,
    rpc_error_response,
)
from tensorwasm_gateway.http.metadata import call_metadata, signature_key_of
from tensorwasm_gateway.http.signatures import SignatureCache
from tensorwasm_gateway.http.stream import relay

_INVALID = grpc.StatusCode.INVALID_ARGUMENT


def opaque_function_id() -> str:
    """A new function id for a deploy by display name: a random UUIDv4, as the original
    answered, drawn until it starts with a letter (function ids do)."""
    while True:
        candidate = str(uuid.uuid4())
        if candidate[0].isalpha():
            return candidate


class HttpFace:
    """The endpoints, calling the gateway's gRPC API on `channel`.

    A JSON invoke needs the export's signature to type its arguments; the signatures
    read by GetFunction are cached (see SignatureCache). A cached signature is only a
    guess: the executor checks every argument's type before the guest runs, so when the
    function was redeployed under the same name with another signature, the Invoke
    fails with ARGUMENT_MISMATCH (or the stale types do not fit the JSON arguments
    here); the face then reads the function again and retries once, only if the
    arguments' typing changed. An async invocation (checked by the executor only once
    it runs) always reads the function first.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        signatures: SignatureCache,
        *,
        timeout_seconds: float,
        max_body_bytes: int,
        face_secret: str = "",
        invoke_timeout_seconds: float = 30.0,
    ) -> None:
        self.stub = pb_grpc.GatewayServiceStub(channel)
        # Proves to the guard that the calls come from this process's face, so that the
        # x-forwarded-for it appends names the HTTP client (audit, auth throttling).
        self._proof = ((FACE_PROOF_KEY, face_secret),) if face_secret else ()
        self._health = health_pb2_grpc.HealthStub(channel)
        self._signatures = signatures
        self._timeout = timeout_seconds
        self._invoke_timeout = invoke_timeout_seconds
        self._max_body_bytes = max_body_bytes

    async def healthz(self, request: Request) -> Response:
        try:
            reply = await self._health.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
            serving = reply.status == health_pb2.HealthCheckResponse.SERVING
        except grpc.aio.AioRpcError:
            serving = False
        status = {"status": "ok"} if serving else {"status": "not_serving"}
        return json_response(200 if serving else 503, status)

    async def metrics(self, request: Request) -> Response:
        return Response(generate_latest(), 200, {"content-type": CONTENT_TYPE_LATEST})

    async def create(self, request: Request) -> Response:
        body = documents.json_object(await self.read_body(request), {"name", "wasm_b64"})
        name, encoded = body.get("name"), body.get("wasm_b64")
        if not isinstance(name, str) or not name.strip():
            raise FaceError(_INVALID, Reason.INVALID_NAME, "name is required")
        if not isinstance(encoded, str):
            raise FaceError(_INVALID, Reason.INVALID_JSON, "wasm_b64 is required")
        try:
            wasm = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise FaceError(_INVALID, Reason.INVALID_BASE64, "wasm_b64 is not base64") from None
        create = pb.CreateFunctionRequest(
            function_id=opaque_function_id(),
            wasm=wasm,
            config=pb.FunctionConfig(display_name=name),
        )
        reply = await self.stub.CreateFunction(create, **self.call_options(request))
        return json_response(200, documents.function_json(reply.function))

    async def delete(self, request: Request) -> Response:
        name = f"functions/{request.path_params['id']}"
        await self.stub.DeleteFunction(
            pb.DeleteFunctionRequest(name=name), **self.call_options(request)
        )
        return Response(status_code=204)

    async def invoke(self, request: Request) -> Response:
        function_id = request.path_params["id"]
        body = await self.read_body(request)
        invoke, cached = await self._invoke_request(request, function_id, body)
        try:
            reply = await self.stub.Invoke(invoke, **self.call_options(request, invoke=True))
        except grpc.aio.AioRpcError as exc:
            retry = await self._retyped(request, function_id, body, invoke, exc) if cached else None
            if retry is None:
                raise
            reply = await self.stub.Invoke(retry, **self.call_options(request, invoke=True))
        if reply.outcome.HasField("failure"):
            return failure_response(function_id, reply.outcome)
        return json_response(200, documents.outcome_json(function_id, reply.outcome))

    async def invoke_async(self, request: Request) -> Response:
        function_id = request.path_params["id"]
        body = await self.read_body(request)
        invoke, _ = await self._invoke_request(request, function_id, body, fresh=True)
        reply = await self.stub.StartInvocation(
            pb.StartInvocationRequest(
                invocation=invoke, request_id=request.headers.get("idempotency-key", "")
            ),
            **self.call_options(request),
        )
        return json_response(202, {"job_id": reply.invocation.name.removeprefix("invocations/")})

    async def job(self, request: Request) -> Response:
        name = f"invocations/{request.path_params['id']}"
        reply = await self.stub.GetInvocation(
            pb.GetInvocationRequest(name=name), **self.call_options(request)
        )
        return json_response(200, documents.job_json(reply.invocation))

    async def invoke_stream(self, request: Request) -> Response:
        function_id = request.path_params["id"]
        body = await self.read_body(request)
        invoke, cached = await self._invoke_request(request, function_id, body)
        call = self.stub.InvokeStream(
            pb.InvokeStreamRequest(invocation=invoke), **self.call_options(request, invoke=True)
        )
        sse = "text/event-stream" in request.headers.get("accept", "")
        try:  # request errors end the call before any event: answer them as errors
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            retry = await self._retyped(request, function_id, body, invoke, exc) if cached else None
            if retry is None:
                return rpc_error_response(exc)
            call = self.stub.InvokeStream(
                pb.InvokeStreamRequest(invocation=retry), **self.call_options(request, invoke=True)
            )
            try:
                first = await call.read()
            except grpc.aio.AioRpcError as again:
                return rpc_error_response(again)
        headers = {
            "content-type": "text/event-stream" if sse else "application/octet-stream",
            "cache-control": "no-cache",
            "connection": "close",
        }
        return StreamingResponse(relay(call, first, function_id, sse), headers=headers)

    async def read_body(self, request: Request) -> bytes:
        """The request body (Content-Length or chunked), at most max_body_bytes."""
        too_large = RequestRefusedError(413, "body_too_large", "body too large", close=True)
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > self._max_body_bytes:
            raise too_large
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > self._max_body_bytes:
                    raise too_large
        except ClientDisconnect:
            raise RequestRefusedError(400, "bad_request", "incomplete body", close=True) from None
        return bytes(body)

    def call_options(
        self, request: Request, *, tenant: str | None = None, invoke: bool = False
    ) -> dict[str, Any]:
        """The options of a gRPC call made for `request`; `tenant` replaces the caller's
        x-tensorwasm-tenant (None: as sent); `invoke`: the call runs a guest now, under
        the face's invoke deadline."""
        metadata = call_metadata(request)
        if tenant is not None:
            metadata = [(k, v) for k, v in metadata if k != "x-tensorwasm-tenant"]
            metadata.append(("x-tensorwasm-tenant", tenant))
        timeout = self._invoke_timeout if invoke else self._timeout
        return {"metadata": [*metadata, *self._proof], "timeout": timeout}

    async def _read_signatures(self, request: Request, function_id: str) -> documents.ParamTypes:
        """GetFunction (the gateway authorises it as any call), cached for the TTL."""
        reply = await self.stub.GetFunction(
            pb.GetFunctionRequest(name=f"functions/{function_id}"), **self.call_options(request)
        )
        return self._signatures.put(signature_key_of(request, function_id), reply.function).params

    async def _invoke_request(
        self, request: Request, function_id: str, body: bytes, *, fresh: bool = False
    ) -> tuple[pb.InvokeRequest, bool]:
        """The gRPC request for an InvokeRequest body: the args are typed by the export's
        signature, read first unless cached (`fresh`: read it in any case). Returns the
        request and whether a cached signature typed it."""
        export, args, guest_input = documents.invoke_body(body)
        key = signature_key_of(request, function_id)
        cached = None if fresh else self._signatures.get(key)
        params = cached.params if cached else await self._read_signatures(request, function_id)
        try:
            values = documents.typed_args(params, export, args)
        except FaceError:
            if cached is None:
                raise
            # the cached types do not fit: the function may have changed; read it again
            params, cached = await self._read_signatures(request, function_id), None
            values = documents.typed_args(params, export, args)
        name = f"functions/{function_id}"
        invoke = pb.InvokeRequest(name=name, export_name=export, args=values, input=guest_input)
        return invoke, cached is not None

    async def _retyped(
        self,
        request: Request,
        function_id: str,
        body: bytes,
        sent: pb.InvokeRequest,
        exc: grpc.aio.AioRpcError,
    ) -> pb.InvokeRequest | None:
        """After a call typed by a cached signature failed before the guest ran: the
        request typed by the function's current signature, or None when that typing is
        the same (the error stands) or the error is not a typing one."""
        self._signatures.forget(signature_key_of(request, function_id))
        if error_reason(exc) is not Reason.ARGUMENT_MISMATCH:
            return None
        retry, _ = await self._invoke_request(request, function_id, body, fresh=True)
        return None if retry == sent else retry
