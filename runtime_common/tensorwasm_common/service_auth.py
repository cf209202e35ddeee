"""The fleet credential: a shared service token sent on internal calls and checked by the
internal services (defence in depth under the mesh's mTLS).

Every internal client (gateway -> executor/store, executor -> store/dispatcher/jit,
dispatcher -> jit) sends the token as `x-tensorwasm-service-token` metadata; the executor,
dispatcher, snapshot store and jit cache refuse any other call with UNAUTHENTICATED
(SERVICE_TOKEN_REQUIRED when none is sent, SERVICE_TOKEN_INVALID when it differs), except
the health and reflection services, which probes and tools reach without it. Tokens are
compared with `hmac.compare_digest`.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import grpc
from tensorwasm.common.v1.service_token import (
    SERVICE_TOKEN_METADATA_KEY,
)

from tensorwasm_common.errors import (
    ServiceError,
    ServiceTokenInvalidError,
    ServiceTokenRequiredError,
)
from tensorwasm_common.handlers import Continuation, RequestT, ResponseT, rewrap

# The fleet-wide variable; a service's own TENSORWASM_<SVC>_SERVICE_TOKEN_FILE overrides it.
COMMON_TOKEN_FILE_ENV = "TENSORWASM_SERVICE_TOKEN_FILE"  # noqa: S105 (a variable name)
MIN_SERVICE_TOKEN_CHARS = 32
MAX_SERVICE_TOKEN_CHARS = 1024
# Printable ASCII without spaces: what a gRPC metadata value can carry unchanged.
_TOKEN_PATTERN = re.compile(r"[\x21-\x7e]+")
# Probes and tools reach these without the token.
_EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def token_exempt(method: str) -> bool:
    """True for the methods callable without the token (health, reflection)."""
    return method.startswith(_EXEMPT_PREFIXES)


class ServiceTokenError(ValueError):
    """The token file is missing, unreadable or not a usable token."""


def read_service_token(path: Path) -> str:
    """The token in `path` (surrounding whitespace dropped).

    Raises:
        ServiceTokenError: unreadable, too short or long, or not printable ASCII.
    """
    try:
        token = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ServiceTokenError(f"cannot read the service token file {path}: {exc}") from exc
    if not MIN_SERVICE_TOKEN_CHARS <= len(token) <= MAX_SERVICE_TOKEN_CHARS:
        raise ServiceTokenError(
            f"the service token in {path} must be {MIN_SERVICE_TOKEN_CHARS}.."
            f"{MAX_SERVICE_TOKEN_CHARS} characters"
        )
    if not _TOKEN_PATTERN.fullmatch(token):
        raise ServiceTokenError(f"the service token in {path} must be printable ASCII, no spaces")
    return token


class ServiceTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without the fleet's service token (health and reflection exempt).

    Install it inside the error interceptor: a refused call gets a handler that raises the
    typed error, which the error interceptor turns into a rich status.
    """

    def __init__(self, token: str) -> None:
        self._expected = token.encode("ascii")
        # The refusing handler of each (method, reason), built once.
        self._refusals: dict[tuple[str, str], grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Continuation[RequestT, ResponseT],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[RequestT, ResponseT] | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or token_exempt(method):
            return handler
        error = self.check(handler_call_details.invocation_metadata)
        if error is None:
            return handler
        key = (method, error.reason)
        refusal = self._refusals.get(key)
        if refusal is None:
            refusal = _refusing_handler(handler, error)
            self._refusals[key] = refusal
        return refusal

    def check(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> ServiceError | None:
        """None when `metadata` carries the fleet's token once, else the refusal."""
        sent = [value for key, value in metadata or () if key == SERVICE_TOKEN_METADATA_KEY]
        if not sent:
            return ServiceTokenRequiredError(
                f"internal service: send the fleet's service token as {SERVICE_TOKEN_METADATA_KEY}"
            )
        value = sent[0]
        given = value if isinstance(value, bytes) else value.encode("utf-8", "replace")
        # compare_digest runs in time independent of where the bytes differ.
        if len(sent) == 1 and hmac.compare_digest(given, self._expected):
            return None
        return ServiceTokenInvalidError("internal service: the service token is not the fleet's")


def _refusing_handler(
    handler: grpc.RpcMethodHandler[RequestT, ResponseT], error: ServiceError
) -> grpc.RpcMethodHandler[RequestT, ResponseT]:
    """A handler of the same kind as `handler` that raises `error` (a fresh copy per call)."""

    def fresh() -> ServiceError:
        return type(error)(error.message)

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        raise fresh()

    async def stream(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        raise fresh()
        yield  # an async generator, as the streaming handlers are

    return rewrap(handler, lambda _behavior: unary, lambda _behavior: stream)
