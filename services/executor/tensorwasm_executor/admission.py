"""Admission control: a bounded number of guest calls in flight, per executor and per tenant."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter as MetricCounter
from prometheus_client import Gauge

from tensorwasm_executor.errors import ExecutorSaturatedError, TenantCapacityExhaustedError

IN_FLIGHT = Gauge("tensorwasm_executor_calls_in_flight", "Guest calls admitted and not finished.")
IN_FLIGHT_LIMIT = Gauge(
    "tensorwasm_executor_calls_in_flight_limit", "The most guest calls admitted at once."
)
REFUSED = MetricCounter(
    "tensorwasm_executor_admission_refusals",
    "Guest calls refused at admission, by cause (tenant_cap, saturated).",
    ["cause"],
)


class Admission:
    """Counts live guest calls; refuses instead of queueing without bound.

    A call holds its slot from admission until its outcome is ready, so `max_in_flight`
    bounds running plus waiting calls, and `max_per_tenant` keeps one tenant from taking
    every slot.
    """

    def __init__(
        self, *, max_in_flight: int, max_per_tenant: int, retry_after_seconds: float = 0.05
    ) -> None:
        if max_in_flight < 1 or max_per_tenant < 1:
            raise ValueError("max_in_flight and max_per_tenant must be at least 1")
        self.max_in_flight = max_in_flight
        self.max_per_tenant = max_per_tenant
        self._retry = retry_after_seconds
        self._lock = threading.Lock()
        self._total = 0
        self._tenants: Counter[str] = Counter()
        IN_FLIGHT_LIMIT.set(max_in_flight)

    @property
    def in_flight(self) -> int:
        """Calls admitted and not yet finished."""
        return self._total

    def tenant_in_flight(self, tenant: str) -> int:
        """The tenant's calls admitted and not yet finished."""
        with self._lock:
            return self._tenants[tenant]

    def acquire(self, tenant: str) -> Slot:
        """Takes one slot for `tenant`; the caller must `release()` it (once is enough).

        For calls whose guest thread may outlive the request handler (a cancelled
        stream): release from the thread's completion, not from the handler.

        Raises:
            TenantCapacityExhaustedError: the tenant is at its cap.
            ExecutorSaturatedError: the executor is at its cap.
        """
        with self._lock:
            if self._tenants[tenant] >= self.max_per_tenant:
                REFUSED.labels("tenant_cap").inc()
                raise TenantCapacityExhaustedError(
                    f"tenant {tenant!r} has {self.max_per_tenant} calls in flight already",
                    metadata={"tenant": tenant, "limit": str(self.max_per_tenant)},
                    retry_after_seconds=self._retry,
                )
            if self._total >= self.max_in_flight:
                REFUSED.labels("saturated").inc()
                raise ExecutorSaturatedError(
                    "the executor is saturated",
                    metadata={"limit": str(self.max_in_flight)},
                    retry_after_seconds=self._retry,
                )
            self._total += 1
            self._tenants[tenant] += 1
            IN_FLIGHT.set(self._total)
        return Slot(self, tenant)

    def _release(self, tenant: str) -> None:
        with self._lock:
            self._total -= 1
            self._tenants[tenant] -= 1
            IN_FLIGHT.set(self._total)
            if not self._tenants[tenant]:
                del self._tenants[tenant]

    @contextmanager
    def admit(self, tenant: str) -> Iterator[None]:
        """Holds one slot for `tenant` for the duration of the block.

        Raises:
            TenantCapacityExhaustedError: the tenant is at its cap.
            ExecutorSaturatedError: the executor is at its cap.
        """
        slot = self.acquire(tenant)
        try:
            yield
        finally:
            slot.release()


class Slot:
    """One admitted call; `release()` frees it, and later calls of it do nothing."""

    def __init__(self, admission: Admission, tenant: str) -> None:
        self._admission: Admission | None = admission
        self.tenant = tenant
        self._lock = threading.Lock()

    def release(self) -> None:
        """Frees the slot (thread-safe, idempotent)."""
        with self._lock:
            admission, self._admission = self._admission, None
        if admission is not None:
            admission._release(self.tenant)
