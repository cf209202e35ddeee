"""The server interceptors: exceptions to rich statuses and request metrics
(`ErrorInterceptor`), and the one interceptor of every hop (`HopInterceptor`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from grpc.aio import AbortError
from opentelemetry import trace

from tensorwasm_common.deadlines import (
    enter_request_deadline,
    exit_request_deadline,
    request_deadline,
)
from tensorwasm_common.errors import Code, InternalError, ServiceError
from tensorwasm_common.handlers import (
    Behavior,
    Continuation,
    HandlerLayer,
    PerMethod,
    RequestT,
    ResponseT,
    rewrap,
)
from tensorwasm_common.metrics import GRPC_DURATION, GRPC_ERRORS, GRPC_REQUESTS
from tensorwasm_common.rpc_tracing import ServerSpans, server_span
from tensorwasm_common.service_auth import ServiceTokenInterceptor, token_exempt
from tensorwasm_common.status import STATUS_DETAILS_KEY, domain_of, to_grpc_status
from tensorwasm_common.streams import drain

_log = logging.getLogger(__name__)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns ServiceError into `google.rpc.Status` + ErrorInfo, and anything else into an
    INTERNAL error that does not leak internals. Counts every request by method and code."""

    def __init__(self, service: str) -> None:
        self._service = service
        self._domain = domain_of(service)
        self._wrapped = PerMethod()
        self._metrics: dict[tuple[str, Code], tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Continuation[RequestT, ResponseT],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[RequestT, ResponseT] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        wrapped = self._wrapped.get(method, handler)
        if wrapped is None:
            streams = bool(handler.request_streaming)
            wrapped = self._wrapped.put(
                method,
                handler,
                rewrap(
                    handler,
                    lambda behavior: self._wrap_unary(behavior, method, streams),
                    lambda behavior: self._wrap_stream(behavior, method, streams),
                ),
            )
        return wrapped

    def _wrap_unary(self, behavior: Behavior, method: str, streams: bool) -> Behavior:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            async with self._handling(context, method, request if streams else None):
                return await behavior(request, context)

        return wrapped

    def _wrap_stream(self, behavior: Behavior, method: str, streams: bool) -> Behavior:
        async def wrapped(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async with (
                self._handling(context, method, request if streams else None),
                contextlib.aclosing(behavior(request, context)) as responses,
            ):
                async for response in responses:
                    yield response

        return wrapped

    @contextlib.asynccontextmanager
    async def _handling(
        self,
        context: grpc.aio.ServicerContext[Any, Any],
        method: str,
        requests: AsyncIterator[Any] | None,
    ) -> AsyncIterator[None]:
        """Maps what the handler raises to a status and records the call's code and time.

        `requests` is the request stream of a client-streaming call: a refusal is sent
        only once the client has finished sending it (see `streams.drain`).
        """
        started = time.perf_counter()
        code = Code.OK
        try:
            with request_deadline(context.time_remaining()):
                yield
        except AbortError:
            code = _context_code(context)
            raise
        except asyncio.CancelledError:
            code = _cancelled_code(context)
            raise
        except Exception as exc:
            error = self._as_service_error(exc, method)
            code = error.code
            GRPC_ERRORS.labels(self._service, method, str(error.reason)).inc()
            if requests is not None:
                await drain(requests)
            await self._abort(context, error)
        finally:
            self._record(method, code, started)

    @staticmethod
    def _as_service_error(exc: Exception, method: str) -> ServiceError:
        if isinstance(exc, ServiceError):
            if exc.code == Code.INTERNAL:
                _log.error("internal error in %s: %s", method, exc, exc_info=exc)
            return exc
        _log.error("unhandled exception in %s", method, exc_info=exc)
        return InternalError("internal error")

    async def _abort(
        self, context: grpc.aio.ServicerContext[Any, Any], error: ServiceError
    ) -> None:
        """Ends the call with the error's status without raising through the outer layers.

        Setting the code, details and trailing metadata (instead of `context.abort`, which
        raises) ends the call the same way on the wire, but the tracing interceptor then sees
        a return, not an exception: it marks the span with the status code and does not
        format and attach a traceback to every expected error (about 1 ms per call).
        Trailing metadata the handler set (the gateway's `x-request-id`) is kept.
        """
        status = to_grpc_status(error, self._domain)
        kept = tuple(m for m in context.trailing_metadata() or () if m[0] != STATUS_DETAILS_KEY)
        context.set_trailing_metadata((*kept, *status.trailing_metadata))
        context.set_details(status.details)
        context.set_code(status.code)

    def _record(self, method: str, code: Code, started: float) -> None:
        children = self._metrics.get((method, code))
        if children is None:  # looked up once per method and code, not per call
            children = (
                GRPC_REQUESTS.labels(self._service, method, code.name),
                GRPC_DURATION.labels(self._service, method),
            )
            self._metrics[(method, code)] = children
        children[0].inc()
        children[1].observe(time.perf_counter() - started)


class HopInterceptor(ErrorInterceptor):
    """The one server interceptor of a service: for every call, what `TracingInterceptor`,
    `ErrorInterceptor` and (on an internal service with a token) `ServiceTokenInterceptor`
    do, in that order from the outside in, then the service's own `layers` (the gateway's
    guard), outermost first, around the handler.

    Stacked as separate grpc interceptors they cost one interceptor coroutine per layer
    per call and a nest of context managers; here each method's handler is wrapped once,
    and a unary call runs one wrapper with the steps inline. Behaviour is unchanged: a
    refused service token is raised as its typed error inside the error handling, the
    span covers everything, health and reflection skip the token and the layers decide
    for themselves.
    """

    def __init__(
        self,
        service: str,
        *,
        service_token: ServiceTokenInterceptor | None = None,
        layers: Sequence[HandlerLayer] = (),
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        super().__init__(service)
        self._spans = ServerSpans(tracer_provider)
        self._token = service_token
        self._layers = tuple(layers)

    async def intercept_service(
        self,
        continuation: Continuation[RequestT, ResponseT],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[RequestT, ResponseT] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        wrapped = self._wrapped.get(method, handler)
        if wrapped is None:
            wrapped = self._wrapped.put(method, handler, self._build(method, handler))
        return wrapped

    def frame_behavior(self, method: str, behavior: Behavior) -> Behavior:
        """A unary behaviour of `method` wrapped as a call of it would be, less the
        service-token check: for calls carried as frames of a stream whose own call
        was checked (see `tensorwasm_common.frames`). The context it is called with
        stands in for grpc's (metadata, deadline, status)."""
        handler: grpc.RpcMethodHandler[Any, Any] = grpc.unary_unary_rpc_method_handler(behavior)
        wrapped = self._build(method, handler, check_token=False).unary_unary
        assert wrapped is not None
        return wrapped

    def _build(
        self,
        method: str,
        handler: grpc.RpcMethodHandler[RequestT, ResponseT],
        *,
        check_token: bool = True,
    ) -> grpc.RpcMethodHandler[RequestT, ResponseT]:
        inner = handler
        for layer in reversed(self._layers):
            inner = layer.wrap_handler(method, inner)
        # A refused upload is answered once the client has sent it all (`drain`); a
        # bidirectional stream (the executor's Calls) reads nothing before it answers
        # and its client may never half-close, so it is refused at once.
        streams = bool(handler.request_streaming and not handler.response_streaming)
        token = None if token_exempt(method) or not check_token else self._token
        return rewrap(
            inner,
            lambda behavior: self._hop_unary(behavior, method, streams, token),
            lambda behavior: self._hop_stream(behavior, method, streams, token),
        )

    def _hop_unary(
        self,
        behavior: Behavior,
        method: str,
        streams: bool,
        token: ServiceTokenInterceptor | None,
    ) -> Behavior:
        spans = self._spans

        async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            span, attached = spans.start(context, method)
            try:
                started = time.perf_counter()
                code = Code.OK
                deadline = enter_request_deadline(context.time_remaining())
                try:
                    if token is not None:
                        refusal = token.check(context.invocation_metadata())
                        if refusal is not None:
                            raise refusal
                    response = await behavior(request, context)
                except AbortError:
                    code = _context_code(context)
                    raise
                except asyncio.CancelledError:
                    code = _cancelled_code(context)
                    raise
                except Exception as exc:
                    error = self._as_service_error(exc, method)
                    code = error.code
                    GRPC_ERRORS.labels(self._service, method, str(error.reason)).inc()
                    if streams:
                        await drain(request)
                    await self._abort(context, error)
                    response = None
                finally:
                    exit_request_deadline(deadline)
                    self._record(method, code, started)
            except BaseException as exc:
                spans.failed(span, context, exc)
                raise
            else:
                spans.returned(span, context)
                return response
            finally:
                spans.end(span, attached)

        return wrapped

    def _hop_stream(
        self,
        behavior: Behavior,
        method: str,
        streams: bool,
        token: ServiceTokenInterceptor | None,
    ) -> Behavior:
        async def wrapped(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            with server_span(self._spans, context, method):
                async with self._handling(context, method, request if streams else None):
                    if token is not None:
                        refusal = token.check(context.invocation_metadata())
                        if refusal is not None:
                            raise refusal
                    # Closed here, in this call's context, even when the call is cancelled
                    # between two messages.
                    async with contextlib.aclosing(behavior(request, context)) as responses:
                        async for response in responses:
                            yield response

        return wrapped


def _cancelled_code(context: grpc.aio.ServicerContext[Any, Any]) -> Code:
    remaining = context.time_remaining()
    expired = remaining is not None and remaining <= 0
    return Code.DEADLINE_EXCEEDED if expired else Code.CANCELLED


def _context_code(context: grpc.aio.ServicerContext[Any, Any]) -> Code:
    code = context.code()
    return Code(code.value[0]) if isinstance(code, grpc.StatusCode) else Code.UNKNOWN
