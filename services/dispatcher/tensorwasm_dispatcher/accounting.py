"""Per-tenant accounting: the staged-memory quota, usage counters, and request admission.

The quota holds against the bytes a tenant has staged at once across all its requests in
flight: a command whose staging would exceed it fails with quota_exceeded and stages
nothing. Admission caps the requests in flight, in all and per tenant, so one flooding
tenant is turned away (RESOURCE_EXHAUSTED + RetryInfo) before it can fill the dispatcher.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, replace

from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge

from tensorwasm_dispatcher.errors import DispatcherSaturatedError, TenantBusyError

STAGED_BYTES = Gauge(
    "tensorwasm_dispatcher_staged_bytes", "Bytes staged on the device now, by tenant.", ["tenant"]
)
KERNEL_SECONDS = MetricCounter(
    "tensorwasm_dispatcher_kernel_seconds",
    "Time kernels ran (GPU time; wall time on the cpu backend), by tenant.",
    ["tenant"],
)
LAUNCHES = MetricCounter(
    "tensorwasm_dispatcher_launches", "Kernels launched successfully, by tenant.", ["tenant"]
)


@dataclass(frozen=True)
class TenantUsage:
    """A tenant's usage since the dispatcher started."""

    tenant: str
    staged_bytes_total: int = 0
    staged_bytes_current: int = 0
    staged_bytes_peak: int = 0
    memory_quota_bytes: int = 0
    launches: int = 0
    loads: int = 0
    failed_commands: int = 0
    execute_requests: int = 0
    rejected_requests: int = 0
    open_sessions: int = 0
    kernel_seconds: float = 0.0
    device_buffers: int = 0
    device_buffer_bytes: int = 0


class Ledger:
    """The staged-bytes quota and usage counters of every tenant (thread-safe)."""

    def __init__(self, memory_quota_bytes: int) -> None:
        if memory_quota_bytes < 0:
            raise ValueError("memory_quota_bytes must be >= 0")
        self.memory_quota_bytes = memory_quota_bytes
        self._lock = threading.Lock()
        self._usage: dict[str, TenantUsage] = {}

    def usage(self, tenant: str) -> TenantUsage:
        """The tenant's usage (all zero for a tenant never seen)."""
        with self._lock:
            found = self._usage.get(tenant)
        if found is None:
            return TenantUsage(tenant, memory_quota_bytes=self.memory_quota_bytes)
        return replace(found, memory_quota_bytes=self.memory_quota_bytes)

    def _update(self, tenant: str, **changes: int | float) -> TenantUsage:
        """Adds `changes` to the tenant's counters (the lock must be held)."""
        current = self._usage.get(tenant) or TenantUsage(tenant)
        updated = replace(
            current, **{name: getattr(current, name) + delta for name, delta in changes.items()}
        )
        self._usage[tenant] = updated
        return updated

    def reserve(self, tenant: str, size_bytes: int) -> bool:
        """Counts `size_bytes` more staged for the tenant, if the quota allows.

        Returns:
            False (nothing counted) when the tenant would hold more than its quota.
        """
        with self._lock:
            current = self._usage.get(tenant) or TenantUsage(tenant)
            staged = current.staged_bytes_current + size_bytes
            if staged > self.memory_quota_bytes:
                return False
            updated = self._update(
                tenant, staged_bytes_current=size_bytes, staged_bytes_total=size_bytes
            )
            if staged > updated.staged_bytes_peak:
                self._usage[tenant] = replace(updated, staged_bytes_peak=staged)
        STAGED_BYTES.labels(tenant).inc(size_bytes)
        return True

    def release(self, tenant: str, size_bytes: int) -> None:
        """Un-counts staged bytes the tenant's request is done with."""
        with self._lock:
            self._update(tenant, staged_bytes_current=-size_bytes)
        STAGED_BYTES.labels(tenant).dec(size_bytes)

    def record(
        self,
        tenant: str,
        *,
        launches: int = 0,
        loads: int = 0,
        failed_commands: int = 0,
        kernel_seconds: float = 0.0,
        execute_requests: int = 0,
        rejected_requests: int = 0,
        open_sessions: int = 0,
        device_buffers: int = 0,
        device_buffer_bytes: int = 0,
    ) -> TenantUsage:
        """Adds to the tenant's counters; returns them as updated."""
        with self._lock:
            updated = self._update(
                tenant,
                launches=launches,
                loads=loads,
                failed_commands=failed_commands,
                kernel_seconds=kernel_seconds,
                execute_requests=execute_requests,
                rejected_requests=rejected_requests,
                open_sessions=open_sessions,
                device_buffers=device_buffers,
                device_buffer_bytes=device_buffer_bytes,
            )
        if launches:
            LAUNCHES.labels(tenant).inc(launches)
        if kernel_seconds:
            KERNEL_SECONDS.labels(tenant).inc(kernel_seconds)
        return replace(updated, memory_quota_bytes=self.memory_quota_bytes)

    def absorb(self, tenant: str, before: TenantUsage, after: TenantUsage) -> None:
        """Adds what changed between two usage reports of a worker process that keeps its
        own ledger (`workers`), so this ledger (and the metrics) sum all its workers."""
        deltas = {
            name: getattr(after, name) - getattr(before, name)
            for name in _ABSORBED
            if getattr(after, name) != getattr(before, name)
        }
        with self._lock:
            updated = self._update(tenant, **deltas)
            if after.staged_bytes_peak > updated.staged_bytes_peak:
                self._usage[tenant] = replace(updated, staged_bytes_peak=after.staged_bytes_peak)
        if deltas.get("staged_bytes_current"):
            STAGED_BYTES.labels(tenant).inc(deltas["staged_bytes_current"])
        if deltas.get("launches"):
            LAUNCHES.labels(tenant).inc(deltas["launches"])
        if deltas.get("kernel_seconds"):
            KERNEL_SECONDS.labels(tenant).inc(deltas["kernel_seconds"])


# The counters `Ledger.absorb` adds up (the peak is a maximum; rejections are the
# dispatcher's own, never a worker's).
_ABSORBED = (
    "staged_bytes_total", "staged_bytes_current", "launches", "loads", "failed_commands",
    "execute_requests", "open_sessions", "kernel_seconds", "device_buffers",
    "device_buffer_bytes",
)  # fmt: skip


class Slot:
    """One admitted request; `release` it once (further calls do nothing)."""

    def __init__(self, admission: Admission, tenant: str) -> None:
        self._admission: Admission | None = admission
        self.tenant = tenant

    def release(self) -> None:
        """Frees the slot."""
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._release(self.tenant)


class Admission:
    """Caps the requests in flight, in all and per tenant; never queues (back-pressure)."""

    def __init__(
        self, *, max_in_flight: int, max_per_tenant: int, retry_after_seconds: float
    ) -> None:
        if max_in_flight < 1 or max_per_tenant < 1:
            raise ValueError("max_in_flight and max_per_tenant must be at least 1")
        self.max_in_flight = max_in_flight
        self.max_per_tenant = max_per_tenant
        self.retry_after_seconds = retry_after_seconds
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def acquire(self, tenant: str) -> Slot:
        """Admits one request of `tenant`.

        Raises:
            TenantBusyError: the tenant has `max_per_tenant` requests in flight.
            DispatcherSaturatedError: `max_in_flight` requests are in flight.
        """
        with self._lock:
            if self._counts[tenant] >= self.max_per_tenant:
                raise TenantBusyError(
                    f"tenant {tenant!r} has {self.max_per_tenant} GPU requests in flight",
                    metadata={"tenant": tenant, "limit": str(self.max_per_tenant)},
                    retry_after_seconds=self.retry_after_seconds,
                )
            if self._counts.total() >= self.max_in_flight:
                raise DispatcherSaturatedError(
                    f"the dispatcher has {self.max_in_flight} requests in flight",
                    metadata={"limit": str(self.max_in_flight)},
                    retry_after_seconds=self.retry_after_seconds,
                )
            self._counts[tenant] += 1
        return Slot(self, tenant)

    def in_flight(self, tenant: str | None = None) -> int:
        """Requests in flight, of one tenant or in all."""
        with self._lock:
            return self._counts.total() if tenant is None else self._counts[tenant]

    def _release(self, tenant: str) -> None:
        with self._lock:
            self._counts[tenant] -= 1
            if not self._counts[tenant]:
                del self._counts[tenant]
