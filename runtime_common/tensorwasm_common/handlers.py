"""Wrapping gRPC method handlers: the shared part of every server interceptor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

# A method handler's behaviour: `(request or request iterator, context) -> response`.
Behavior = Callable[..., Any]
Wrap = Callable[[Behavior], Behavior]


def rewrap(handler: grpc.RpcMethodHandler, unary: Wrap, stream: Wrap) -> grpc.RpcMethodHandler:
    """A handler of `handler`'s kind and codec whose behaviour is wrapped: by `unary` for a
    single response (unary-unary, stream-unary), by `stream` for a response stream."""
    codec = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **codec)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **codec)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **codec)
    return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), **codec)


class PerMethod:
    """The wrapped handler of each method, built once: the server hands out the same
    handler object for a method on every call, so a wrapper is rebuilt only if it changes."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def get(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler | None:
        """The wrapper built for this method's `handler`, or None."""
        cached = self._wrapped.get(method)
        return cached[1] if cached is not None and cached[0] is handler else None

    def put(
        self, method: str, handler: grpc.RpcMethodHandler, wrapped: grpc.RpcMethodHandler
    ) -> grpc.RpcMethodHandler:
        """Remembers `wrapped` as the wrapper of this method's `handler`; returns it."""
        self._wrapped[method] = (handler, wrapped)
        return wrapped
