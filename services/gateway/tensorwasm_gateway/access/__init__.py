"""Access to the public API: bearer tokens, tenant scope, method policies, rate limits,
concurrency caps and the audit log, enforced by one server interceptor (the guard)."""

from tensorwasm_gateway.access.audit import AuditEvent, AuditLog, AuditSink, FdSink, open_sink
from tensorwasm_gateway.access.guard import (
    CURRENT_PRINCIPAL,
    CURRENT_TENANT,
    Guard,
    GuardInterceptor,
)
from tensorwasm_gateway.access.policies import (
    CALL_CLASSES,
    GATEWAY_POLICIES,
    GATEWAY_RPCS,
    CallClass,
    MethodPolicies,
    MethodPolicy,
    policy_of,
)
from tensorwasm_gateway.access.proxies import NO_PROXIES, TrustedProxies
from tensorwasm_gateway.access.ratelimit import (
    AuthFailureThrottle,
    BucketConfig,
    ConcurrencyCaps,
    Limiter,
    RateLimiter,
)
from tensorwasm_gateway.access.shared_limits import SharedRateLimiter, limiter_for
from tensorwasm_gateway.access.tenants import validate_tenant
from tensorwasm_gateway.access.token_reload import TokenReloader
from tensorwasm_gateway.access.tokens import Principal, Scope, TokenStore, parse_tokens

__all__ = [
    "CALL_CLASSES",
    "CURRENT_PRINCIPAL",
    "CURRENT_TENANT",
    "GATEWAY_POLICIES",
    "GATEWAY_RPCS",
    "NO_PROXIES",
    "AuditEvent",
    "AuditLog",
    "AuditSink",
    "AuthFailureThrottle",
    "BucketConfig",
    "CallClass",
    "ConcurrencyCaps",
    "FdSink",
    "Guard",
    "GuardInterceptor",
    "Limiter",
    "MethodPolicies",
    "MethodPolicy",
    "Principal",
    "RateLimiter",
    "Scope",
    "SharedRateLimiter",
    "TokenReloader",
    "TokenStore",
    "TrustedProxies",
    "limiter_for",
    "open_sink",
    "parse_tokens",
    "policy_of",
    "validate_tenant",
]
