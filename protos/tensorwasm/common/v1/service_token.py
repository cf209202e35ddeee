"""The fleet's service token on the wire: its metadata key, and blocking channels that send it.

Hand-written beside the generated code, so that the services (tensorwasm_common) and the
thin Python client (tensorwasm_client, which depends on these protos only) share one copy.
"""

from __future__ import annotations

from typing import Any

import grpc

SERVICE_TOKEN_METADATA_KEY = "x-tensorwasm-service-token"  # noqa: S105 (a header name)


def token_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata a client adds to every internal call (none without a token)."""
    return ((SERVICE_TOKEN_METADATA_KEY, token),) if token else ()


class _TokenClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds the service token to every call of a blocking channel."""

    def __init__(self, token: str) -> None:
        self._metadata = token_metadata(token)

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=(*(details.metadata or ()), *self._metadata))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


def with_service_token(channel: grpc.Channel, token: str | None) -> grpc.Channel:
    """A blocking channel whose calls carry `token` (`channel` itself without one).

    Closing the returned channel closes `channel`.
    """
    if not token:
        return channel
    return grpc.intercept_channel(channel, _TokenClientInterceptor(token))
