"""Wrapping gRPC method handlers: the shared part of every server interceptor."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeAlias, TypeVar

import grpc

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")

# A method handler's behaviour: `(request or request iterator, context) -> response`. The
# servers are grpc.aio ones, so behaviours are coroutines or async generators, which the
# grpc stubs (typed for the synchronous server) do not describe: hence `...` and Any.
Behavior = Callable[..., Any]
Wrap = Callable[[Behavior], Behavior]
# What a server interceptor calls for the next handler: the method's handler, or None.
Continuation: TypeAlias = Callable[
    [grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[RequestT, ResponseT] | None"]
]


def rewrap(
    handler: grpc.RpcMethodHandler[RequestT, ResponseT], unary: Wrap, stream: Wrap
) -> grpc.RpcMethodHandler[RequestT, ResponseT]:
    """A handler of `handler`'s kind and codec whose behaviour is wrapped: by `unary` for a
    single response (unary-unary, stream-unary), by `stream` for a response stream.

    A response stream written with `context.write` by a coroutine (grpc.aio's
    reader/writer API, e.g. the health service's `Watch`) is wrapped by `unary` too: grpc
    tells the two APIs apart by the behaviour's kind, and an async generator wrapper could
    not iterate a coroutine.
    """
    decode, encode = handler.request_deserializer, handler.response_serializer
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), decode, encode)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), decode, encode)
    if handler.unary_stream:
        wrap = unary if _writes_responses(handler.unary_stream) else stream
        return grpc.unary_stream_rpc_method_handler(wrap(handler.unary_stream), decode, encode)
    if handler.stream_stream:
        wrap = unary if _writes_responses(handler.stream_stream) else stream
        return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream), decode, encode)
    raise ValueError("a method handler without a behaviour")


def _writes_responses(behavior: Behavior) -> bool:
    """True for a streaming behaviour that is a coroutine writing with `context.write`."""
    return inspect.iscoroutinefunction(behavior)


class PerMethod:
    """The wrapped handler of each method, built once: the server hands out the same
    handler object for a method on every call, so a wrapper is rebuilt only if it changes."""

    def __init__(self) -> None:
        self._wrapped: dict[
            str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]
        ] = {}

    def get(
        self, method: str, handler: grpc.RpcMethodHandler[RequestT, ResponseT]
    ) -> grpc.RpcMethodHandler[RequestT, ResponseT] | None:
        """The wrapper built for this method's `handler`, or None."""
        cached = self._wrapped.get(method)
        return cached[1] if cached is not None and cached[0] is handler else None

    def put(
        self,
        method: str,
        handler: grpc.RpcMethodHandler[RequestT, ResponseT],
        wrapped: grpc.RpcMethodHandler[RequestT, ResponseT],
    ) -> grpc.RpcMethodHandler[RequestT, ResponseT]:
        """Remembers `wrapped` as the wrapper of this method's `handler`; returns it."""
        self._wrapped[method] = (handler, wrapped)
        return wrapped


class HandlerLayer(Protocol):
    """A server interceptor's work as a handler wrapper built once per method, so that
    `HopInterceptor` can fold it into the one interceptor of a hop."""

    def wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler[RequestT, ResponseT]
    ) -> grpc.RpcMethodHandler[RequestT, ResponseT]:
        """`handler` with the layer's work around its behaviour (or `handler` itself for a
        method the layer leaves alone)."""
        ...
