"""The gateway's own Prometheus series (requests by method and code live in tensorwasm_common).

`JOBS_ACTIVE` is set by the asynchronous-invocation code: inc() when a job starts running,
dec() when it ends, however it ends. Every `tenant` label goes through `tenant_label`, which
bounds its cardinality (`TENSORWASM_GATEWAY_METRICS_MAX_TENANTS`).
"""

from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge

INVOCATIONS = Counter(
    "tensorwasm_gateway_invocations",
    "Invoking calls (Invoke, InvokeStream, CallInstance, ...) admitted, by tenant and code.",
    ["tenant", "method", "code"],
)
REJECTIONS = Counter(
    "tensorwasm_gateway_rejections",
    "Calls refused by the gateway's guard (auth, scope, rate limit, concurrency), by reason.",
    ["tenant", "reason"],
)
JOBS_ACTIVE = Gauge(
    "tensorwasm_gateway_jobs_active",
    "Asynchronous invocations pending or running.",
)
AUDIT_WRITE_FAILURES = Counter(
    "tensorwasm_gateway_audit_write_failures",
    "Audit records that could not be written (the call itself is not failed).",
)

# The label of every tenant past the first `max_tenants` seen (not a valid tenant name, so
# it cannot be confused with a real tenant).
OTHER_TENANT = "_other"
DEFAULT_MAX_TENANT_LABELS = 100


class TenantLabels:
    """Bounds the cardinality of the `tenant` label: the first `max_tenants` distinct
    tenants get their own label, every later one `_other` (for the process's lifetime).
    The empty tenant (a call refused before its tenant was read) is always itself."""

    def __init__(self, max_tenants: int = DEFAULT_MAX_TENANT_LABELS) -> None:
        self._max = max_tenants
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def configure(self, max_tenants: int) -> None:
        """Sets the bound (at start; tenants already labelled keep their label)."""
        self._max = max_tenants

    def __call__(self, tenant: str) -> str:
        if not tenant or tenant in self._seen:
            return tenant
        with self._lock:  # also called from worker threads
            if tenant in self._seen:
                return tenant
            if len(self._seen) < self._max:
                self._seen.add(tenant)
                return tenant
        return OTHER_TENANT


tenant_label = TenantLabels()
