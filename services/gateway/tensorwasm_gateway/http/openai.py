"""The OpenAI-compatible front: `POST /v1/completions` and `POST /v1/chat/completions`.

A model names a function (TENSORWASM_GATEWAY_OPENAI_MODEL_MAP); the prompt is staged as
the guest's `wasi:tensor` input, its default export is called without arguments, and
the chunks it emits are the completion (streamed as OpenAI server-sent events with
`stream: true`). The tenant is the caller's token's: `x-tensorwasm-tenant` is ignored.
"""

from __future__ import annotations

import codecs
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from tensorwasm.common.v1 import invocation_pb2
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm_common.errors import ServiceError
from tensorwasm_common.status import error_from_rpc
from tensorwasm_common.tenants import DEFAULT_TENANT

from tensorwasm_gateway.access.tokens import Principal
from tensorwasm_gateway.http.errors import dump, json_response, status_and_kind
from tensorwasm_gateway.http.openai_documents import (
    CHAT,
    COMPLETIONS,
    Completion,
    CompletionRequest,
    OpenAiError,
    error_envelope,
    parse_request,
)
from tensorwasm_gateway.http.routes import HttpFace

_log = logging.getLogger(__name__)
# The tenant a caller's `authorization` values act for (raises OpenAiError when its
# token cannot name one; None: unauthenticated, the gateway answers that).
TenantOf = Callable[[list[str]], str | None]


def token_tenant(authenticate: Callable[[list[str]], Principal]) -> TenantOf:
    """The tenant of the caller's token: the one tenant it is scoped to; the default
    tenant for a wildcard token (and in dev mode); refused (403) for a token scoped to
    several tenants, which names none."""
    warned: list[bool] = []

    def tenant_of(authorization: list[str]) -> str | None:
        try:
            principal = authenticate(authorization)
        except ServiceError:
            return None  # the gateway answers the call UNAUTHENTICATED
        tenants = principal.scope.tenants
        if tenants is None:
            if not warned and principal.kind != "dev":
                warned.append(True)
                _log.warning(
                    "a wildcard token called the OpenAI front: it acts for tenant %r",
                    DEFAULT_TENANT,
                )
            return DEFAULT_TENANT
        if len(tenants) == 1:
            return next(iter(tenants))
        raise OpenAiError(
            403, "tenant_scope_denied",
            "the OpenAI front acts for the token's tenant: use a token scoped to one tenant",
        )  # fmt: skip

    return tenant_of


class OpenAiFront:
    """The two routes, calling the gateway's gRPC API through `face`."""

    def __init__(self, face: HttpFace, models: Mapping[str, str], tenant_of: TenantOf) -> None:
        self._face = face
        self._models = dict(models)
        self._tenant_of = tenant_of

    async def completions(self, request: Request) -> Response:
        return await self._complete(request, COMPLETIONS)

    async def chat_completions(self, request: Request) -> Response:
        return await self._complete(request, CHAT)

    async def _complete(self, request: Request, kind: str) -> Response:
        completion = parse_request(kind, await self._face.read_body(request))
        function = self._models.get(completion.model)
        if function is None:
            raise OpenAiError(
                404, "model_not_found", f"the model {completion.model!r} does not exist", "model"
            )
        tenant = self._tenant_of(request.headers.getlist("authorization"))
        options = self._face.call_options(request, tenant=tenant, invoke=True)
        invoke = pb.InvokeRequest(name=f"functions/{function}", input=completion.prompt)
        if completion.stream:
            return await self._stream(invoke, options, completion)
        try:
            reply = await self._face.stub.Invoke(invoke, **options)
        except grpc.aio.AioRpcError as exc:
            return rpc_error_response(exc)
        if reply.outcome.HasField("failure"):
            return failure_response(reply.outcome)
        text = reply.outcome.chunks.decode("utf-8", "replace")
        return json_response(200, Completion(completion).response(text))

    async def _stream(
        self, invoke: pb.InvokeRequest, options: dict[str, Any], completion: CompletionRequest
    ) -> Response:
        call = self._face.stub.InvokeStream(pb.InvokeStreamRequest(invocation=invoke), **options)
        try:  # request errors come before any event: answer them as errors
            first = await call.read()
        except grpc.aio.AioRpcError as exc:
            return rpc_error_response(exc)
        headers = {"content-type": "text/event-stream", "cache-control": "no-cache"}
        return StreamingResponse(_events(call, first, Completion(completion)), headers=headers)


async def _events(call: Any, first: Any, completion: Completion) -> AsyncIterator[bytes]:
    """`data: <chunk>` per emitted chunk, a last chunk with finish_reason, `data: [DONE]`;
    a failure is a `data: {"error": ...}` event and ends the stream."""
    text = codecs.getincrementaldecoder("utf-8")("replace")
    sent_first = False
    try:
        message = first
        while message is not grpc.aio.EOF:
            kind = message.WhichOneof("event")
            if kind == "chunk":
                chunk = completion.chunk(text.decode(message.chunk), first=not sent_first)
                sent_first = True
                yield b"data: " + dump(chunk) + b"\n\n"
            elif kind == "outcome":
                if message.outcome.HasField("failure"):
                    yield b"data: " + dump(_failure_envelope(message.outcome)[1]) + b"\n\n"
                    return
                yield b"data: " + dump(completion.chunk(None, first=not sent_first)) + b"\n\n"
                yield b"data: [DONE]\n\n"
            message = await call.read()
    except grpc.aio.AioRpcError as exc:
        yield b"data: " + dump(_rpc_envelope(exc)[1]) + b"\n\n"
    finally:
        call.cancel()


def _rpc_envelope(exc: grpc.aio.AioRpcError) -> tuple[int, dict[str, Any]]:
    error = error_from_rpc(exc)
    status, kind = status_and_kind(exc.code(), error.reason)
    return status, error_envelope(status, kind, exc.details() or exc.code().name)


def rpc_error_response(exc: grpc.aio.AioRpcError) -> Response:
    """A failed gRPC call as the OpenAI error envelope (`code`: the native error kind)."""
    status, envelope = _rpc_envelope(exc)
    return json_response(status, envelope)


def _failure_envelope(outcome: invocation_pb2.InvocationOutcome) -> tuple[int, dict[str, Any]]:
    failure = outcome.failure
    if failure.reason == "DEADLINE_EXCEEDED":
        return 504, error_envelope(504, "invoke_timeout", failure.message)
    return 500, error_envelope(500, "wasmtime", f"the function failed: {failure.message}")


def failure_response(outcome: invocation_pb2.InvocationOutcome) -> Response:
    """A guest failure: 504 invoke_timeout for its deadline, else 500 `wasmtime`."""
    status, envelope = _failure_envelope(outcome)
    return json_response(status, envelope)


async def on_openai_error(request: Request, exc: Exception) -> Response:
    """Exception handler: a refused OpenAI request as the OpenAI error envelope."""
    assert isinstance(exc, OpenAiError)
    return json_response(exc.status, error_envelope(exc.status, exc.code, exc.message, exc.param))
