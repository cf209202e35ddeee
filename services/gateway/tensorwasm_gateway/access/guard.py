"""The gateway's guard: bearer auth, tenant scope, rate limits, concurrency caps and audit.

One server interceptor runs, for every call of the public API (health and reflection are
open probes), in this order: refuse a peer address that failed authentication too often
lately, without checking its token (RESOURCE_EXHAUSTED, AUTH_THROTTLED + RetryInfo) →
authenticate the bearer token (UNAUTHENTICATED; a failure is charged to the peer) → read and
validate `x-tensorwasm-tenant` → check the token's scope covers the tenant, and the admin
role for fleet operations (PERMISSION_DENIED, before any lookup, so existence never leaks
across tenants) → take from the rate-limit buckets → take a concurrency slot of the call's
class (RESOURCE_EXHAUSTED + RetryInfo) → the handler. Mutating and invoking calls write
one audit record, allowed or denied (a call refused for its token has no actor).

Each method's class and audit policy come from a declarative table
(`tensorwasm_gateway.access.policies`); the guard is built with it.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import grpc
from grpc.aio import AbortError
from opentelemetry import trace
from tensorwasm_common.channels import REQUEST_ID_KEY, TENANT_METADATA_KEY
from tensorwasm_common.errors import Code, InvalidNameError, Reason, ServiceError
from tensorwasm_common.handlers import (
    Behavior,
    Continuation,
    PerMethod,
    RequestT,
    ResponseT,
    rewrap,
)
from tensorwasm_common.tenants import DEFAULT_TENANT

from tensorwasm_gateway.access.audit import AuditEvent, AuditLog
from tensorwasm_gateway.access.policies import GATEWAY_POLICIES, MethodPolicies, MethodPolicy
from tensorwasm_gateway.access.proxies import NO_PROXIES, TrustedProxies
from tensorwasm_gateway.access.ratelimit import (
    AuthFailureThrottle,
    BucketConfig,
    ConcurrencyCaps,
    Limiter,
)
from tensorwasm_gateway.access.tenants import validate_tenant
from tensorwasm_gateway.access.tokens import (
    Principal,
    TokenStore,
    authorize_admin,
    authorize_tenant,
)
from tensorwasm_gateway.errors import (
    AdminScopeRequiredError,
    AuthThrottledError,
    ConcurrencyExhaustedError,
    InvalidMetadataError,
    RateLimitedError,
    TenantScopeDeniedError,
    UnauthenticatedError,
)
from tensorwasm_gateway.metrics import INVOCATIONS, REJECTIONS, tenant_label
from tensorwasm_gateway.request_ids import CURRENT_REQUEST_ID, request_id_from

AUTHORIZATION_KEY = "authorization"
FORWARDED_FOR_KEY = "x-forwarded-for"
OPEN_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")
_PEER_CHARS = re.compile(r"[^0-9A-Za-z.:\[\]_-]")
# The refusals the guard itself makes (counted by REJECTIONS, by reason).
_GUARD_ERRORS = (
    AuthThrottledError,
    UnauthenticatedError,
    TenantScopeDeniedError,
    AdminScopeRequiredError,
    RateLimitedError,
    ConcurrencyExhaustedError,
    InvalidMetadataError,
    InvalidNameError,
)

# The tenant the guard admitted the current call for; the servicer reads it.
CURRENT_TENANT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tensorwasm_gateway_tenant", default=None
)
# Who the guard admitted the current call for (the kernel registry checks role=publish).
CURRENT_PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "tensorwasm_gateway_principal", default=None
)


def resource_of(request: Any) -> str:
    """The resource a request names (`functions/x`, `instances/y`), or ""."""
    for field in ("name", "function"):
        value = getattr(request, field, None)
        if isinstance(value, str) and value:
            return value
    function_id = getattr(request, "function_id", None)
    if isinstance(function_id, str) and function_id:
        return f"functions/{function_id}"
    nested = getattr(request, "invocation", None)
    if nested is not None:
        return resource_of(nested)
    return ""


def _values(metadata: Any, key: str) -> list[str]:
    return [str(v) for k, v in metadata or () if k == key]


def peer_of(
    context: grpc.aio.ServicerContext[Any, Any],
    metadata: Any,
    trusted: TrustedProxies = NO_PROXIES,
) -> str:
    """The caller's address; a trusted proxy (a configured address, or this gateway's own
    HTTP face) may name its own client in x-forwarded-for. Anyone else could claim any
    address there, so their header is ignored."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    host = rest.rpartition(":")[0] if kind in ("ipv4", "ipv6") else ""
    if host and trusted and trusted.forwards(host, metadata):
        forwarded = _values(metadata, FORWARDED_FOR_KEY)
        if forwarded:
            # The last hop is the one the trusted proxy appended; earlier ones are
            # whatever its client claimed.
            nearest = forwarded[-1].split(",")[-1].strip()
            if nearest:
                return _PEER_CHARS.sub("?", nearest[:64])
    return rest if kind in ("ipv4", "ipv6") else peer


def peer_host(context: grpc.aio.ServicerContext[Any, Any], peer: str) -> str:
    """`peer` (as `peer_of` gave it) without its port: what failed authentication is
    charged to."""
    kind, _, rest = (context.peer() or "").partition(":")
    if kind in ("ipv4", "ipv6") and peer == rest:
        return rest.rpartition(":")[0]  # the direct peer's host:port
    return peer  # a forwarded address (no port) or a unix socket


def _trace_id() -> str:
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else ""


class Guard:
    """The admission checks (no grpc types): principal, tenant, limits."""

    def __init__(
        self,
        tokens: TokenStore,
        limiter: Limiter,
        caps: ConcurrencyCaps,
        audit: AuditLog,
        policies: MethodPolicies = GATEWAY_POLICIES,
        *,
        trusted_proxies: TrustedProxies = NO_PROXIES,
        auth_failures: AuthFailureThrottle | None = None,
    ) -> None:
        self.tokens = tokens
        self.trusted_proxies = trusted_proxies
        self.limiter = limiter
        self.caps = caps
        self.audit = audit
        self.policies = policies
        self.auth_failures = auth_failures or AuthFailureThrottle(BucketConfig(0, 0))
        self._invocations: dict[tuple[str, str, str], Any] = {}

    def count_invocation(self, tenant: str, action: str, code: str) -> None:
        """Counts an admitted invoking call (`INVOCATIONS`); each label set's child is
        looked up once, not on every call."""
        labels = (tenant_label(tenant), action, code)
        child = self._invocations.get(labels)
        if child is None:
            child = self._invocations[labels] = INVOCATIONS.labels(*labels)
        child.inc()

    def authenticate(self, metadata: Any, peer: str = "") -> Principal:
        """The caller's principal (UNAUTHENTICATED / INVALID_METADATA when none).

        A `peer` whose authentications failed too often lately is refused first
        (AUTH_THROTTLED) without looking at its token; each failure is charged to it.
        """
        self.auth_failures.check(peer)
        try:
            return self.tokens.authenticate(_values(metadata, AUTHORIZATION_KEY))
        except (UnauthenticatedError, InvalidMetadataError):
            self.auth_failures.failed(peer)
            raise

    @staticmethod
    def tenant_of(principal: Principal, metadata: Any) -> str:
        """The tenant the call names; a single-tenant token's tenant, else the default."""
        tenants = _values(metadata, TENANT_METADATA_KEY)
        if len(tenants) > 1:
            raise InvalidMetadataError(f"more than one {TENANT_METADATA_KEY} header")
        if tenants:
            return validate_tenant(tenants[0].strip())
        if principal.scope.tenants is not None and len(principal.scope.tenants) == 1:
            (tenant,) = principal.scope.tenants
            return tenant
        return DEFAULT_TENANT

    def authorize(
        self, policy: MethodPolicy, principal: Principal, tenant: str
    ) -> Awaitable[None] | None:
        """Scope (and admin role) checks, then the rate-limit buckets: None once
        admitted, or an awaitable that decides without blocking the event loop (a shared
        limiter that must ask its database first; it raises RateLimitedError too)."""
        authorize_tenant(principal, tenant)
        if policy.call_class == "admin":
            authorize_admin(principal)
        if principal.kind == "dev":  # dev mode (no tokens, loopback) is not rate-limited
            return None
        return self.limiter.take_or_defer(principal.token_id, tenant)


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """Runs the Guard around every guarded method; wrapped handlers are cached per method.

    Also a `HandlerLayer`: the gateway folds it into its one interceptor (`create_host`'s
    `layers`), where `wrap_handler` is called once per method.
    """

    def __init__(self, guard: Guard) -> None:
        self._guard = guard
        self._wrapped = PerMethod()

    async def intercept_service(
        self,
        continuation: Continuation[RequestT, ResponseT],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[RequestT, ResponseT] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method, handler)
        if wrapped is None:
            wrapped = self._wrapped.put(method, handler, self.wrap_handler(method, handler))
        return wrapped

    def wrap_handler(
        self, method: str, handler: grpc.RpcMethodHandler[RequestT, ResponseT]
    ) -> grpc.RpcMethodHandler[RequestT, ResponseT]:
        """`handler` guarded by the method's policy; open probes (health, reflection) as
        they are."""
        if method.startswith(OPEN_PREFIXES):
            return handler
        policy = self._guard.policies.of(method)
        return rewrap(
            handler,
            lambda behavior: self._unary(behavior, policy),
            lambda behavior: self._stream(behavior, policy),
        )

    def _unary(self, behavior: Behavior, policy: MethodPolicy) -> Behavior:
        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            call = _Call(self._guard, policy, request, context)
            try:
                pending = call.enter()
                if pending is not None:
                    await pending
                return await behavior(request, context)
            except BaseException as exc:
                call.failed(exc, context)
                raise
            finally:
                call.exit()

        return guarded

    def _stream(self, behavior: Behavior, policy: MethodPolicy) -> Behavior:
        async def guarded(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            call = _Call(self._guard, policy, request, context)
            try:
                pending = call.enter()
                if pending is not None:
                    await pending
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response
            except BaseException as exc:
                call.failed(exc, context)
                raise
            finally:
                call.exit()

        return guarded


def _reset(var: contextvars.ContextVar[Any], token: contextvars.Token[Any]) -> None:
    """Resets `var` where `token` was made. A stream that the event loop finalised (its
    call cancelled between two messages) ends in another context, where the call's context
    is gone: there is nothing to reset, and the call is still counted and audited."""
    with contextlib.suppress(ValueError):
        var.reset(token)


class _Call:
    """The state of one guarded call, from admission to its audit record."""

    __slots__ = (
        "_context",
        "_guard",
        "_metadata",
        "_policy",
        "_principal_token",
        "_request",
        "_request_id_token",
        "_slot",
        "_started",
        "_tenant_token",
        "code",
        "peer",
        "principal",
        "reason",
        "request_id",
        "tenant",
    )

    def __init__(
        self,
        guard: Guard,
        policy: MethodPolicy,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        self._started = time.perf_counter()
        self._guard = guard
        self._policy = policy
        self._request = request
        self._context = context
        self._metadata = context.invocation_metadata()
        self._slot = False
        self._tenant_token: contextvars.Token[str | None] | None = None
        self._principal_token: contextvars.Token[Principal | None] | None = None
        # Chosen before any check, so refused calls are answered with it too.
        self.request_id = request_id_from(self._metadata)
        self._request_id_token = CURRENT_REQUEST_ID.set(self.request_id)
        context.set_trailing_metadata(((REQUEST_ID_KEY, self.request_id),))
        self.principal: Principal | None = None
        self.peer = ""
        self.tenant = ""
        self.code = Code.OK
        self.reason = ""

    def enter(self) -> Awaitable[None] | None:
        """Admits the call, or raises; None once admitted, else an awaitable that
        admits it (the rate limiter must ask its database first)."""
        guard = self._guard
        # Read once: audited at exit, and failed authentication is charged to its host.
        self.peer = peer_of(self._context, self._metadata, guard.trusted_proxies)
        host = peer_host(self._context, self.peer)
        self.principal = principal = guard.authenticate(self._metadata, host)
        self.tenant = guard.tenant_of(principal, self._metadata)
        pending = guard.authorize(self._policy, principal, self.tenant)
        if pending is not None:
            return self._admit_after(pending)
        self._admit()
        return None

    async def _admit_after(self, pending: Awaitable[None]) -> None:
        await pending
        self._admit()

    def _admit(self) -> None:
        """Takes a concurrency slot and makes the caller's tenant and principal current."""
        self._guard.caps.acquire(self._policy.call_class)
        self._slot = True
        self._tenant_token = CURRENT_TENANT.set(self.tenant)
        self._principal_token = CURRENT_PRINCIPAL.set(self.principal)

    def failed(self, exc: BaseException, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if isinstance(exc, ServiceError):
            self.code, self.reason = exc.code, exc.reason
            if not self._slot and isinstance(exc, _GUARD_ERRORS):
                REJECTIONS.labels(tenant_label(self.tenant), exc.reason).inc()
        elif isinstance(exc, AbortError):
            code = context.code()
            self.code = Code(code.value[0]) if isinstance(code, grpc.StatusCode) else Code.UNKNOWN
        elif isinstance(exc, Exception):
            self.code, self.reason = Code.INTERNAL, Reason.INTERNAL
        else:
            self.code = Code.CANCELLED

    def exit(self) -> None:
        _reset(CURRENT_REQUEST_ID, self._request_id_token)
        if self._tenant_token is not None:
            _reset(CURRENT_TENANT, self._tenant_token)
        if self._principal_token is not None:
            _reset(CURRENT_PRINCIPAL, self._principal_token)
        if self._slot:
            self._guard.caps.release(self._policy.call_class)
            if self._policy.invoking:
                self._guard.count_invocation(self.tenant, self._policy.action, self.code.name)
        audit = self._guard.audit
        if not self._policy.audited or not audit.enabled:
            return
        audit.record(
            AuditEvent(
                request_id=self.request_id,
                principal=self.principal,
                action=self._policy.action,
                resource=resource_of(self._request),
                tenant=self.tenant,
                code=self.code.name,
                reason=self.reason,
                latency_seconds=time.perf_counter() - self._started,
                peer=self.peer,
                trace_id=_trace_id(),
            )
        )
