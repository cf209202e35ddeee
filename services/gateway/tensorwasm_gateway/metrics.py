"""The gateway's own Prometheus series (requests by method and code live in tensorwasm_common).

`JOBS_ACTIVE` is set by the asynchronous-invocation code: inc() when a job starts running,
dec() when it ends, however it ends.
"""

from __future__ import annotations

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
