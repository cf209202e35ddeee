"""Live (stateful) instances: ids, tenant ownership, caps and the idle TTL."""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tensorwasm_common.errors import AlreadyExistsError, InstanceNotFoundError

from tensorwasm_executor.errors import InstanceCapacityExhaustedError, TenantCapacityExhaustedError
from tensorwasm_executor.wasm.sandbox import Resident


@dataclass(eq=False)
class LiveInstance:
    """One live instance and its bookkeeping."""

    id: str
    tenant: str
    module_digest: str
    idle_ttl_seconds: float
    resident: Resident = field(repr=False)
    last_used: float = 0.0
    busy: int = 0  # calls running or waiting on it
    function_id: str = ""  # named in its snapshots
    checkpoint_seconds: int = 0  # 0: never checkpointed
    calls: int = 0  # calls made on it so far
    checkpointed_calls: int = 0  # `calls` when its last checkpoint was taken
    last_checkpoint: float = 0.0  # when that was (the table's clock)


class Reservation:
    """A slot held while an instance is being created; `commit` or `release` it."""

    def __init__(self, table: InstanceTable, tenant: str) -> None:
        self._table: InstanceTable | None = table
        self.tenant = tenant

    def commit(
        self,
        resident: Resident,
        module_digest: str,
        idle_ttl_seconds: float,
        *,
        instance_id: str = "",
        function_id: str = "",
        checkpoint_seconds: int = 0,
    ) -> LiveInstance:
        """Registers the created instance under `instance_id`, or a new id (the slot
        becomes its)."""
        table, self._table = self._table, None
        if table is None:
            raise RuntimeError("reservation already used")
        live = LiveInstance(
            id=instance_id or secrets.token_hex(16),
            tenant=self.tenant,
            module_digest=module_digest,
            idle_ttl_seconds=idle_ttl_seconds,
            resident=resident,
            function_id=function_id,
            checkpoint_seconds=checkpoint_seconds,
        )
        return table._commit(live)

    def release(self) -> None:
        """Gives the slot back (creation failed). Idempotent; a no-op after commit."""
        table, self._table = self._table, None
        if table is not None:
            table._unreserve(self.tenant)


class InstanceTable:
    """The executor's live instances, capped in all and per tenant.

    An instance of another tenant is reported exactly like a missing one, so ids
    cannot be probed across tenants. Idle instances (no call for their TTL) are
    terminated by `expire()`, which the server calls periodically.
    """

    def __init__(
        self,
        *,
        max_instances: int,
        max_per_tenant: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_instances < 1 or max_per_tenant < 1:
            raise ValueError("max_instances and max_per_tenant must be at least 1")
        self.max_instances = max_instances
        self.max_per_tenant = max_per_tenant
        self._clock = clock
        self._lock = threading.Lock()
        self._live: dict[str, LiveInstance] = {}
        self._counts: Counter[str] = Counter()  # live + reserved, per tenant

    def __len__(self) -> int:
        with self._lock:
            return len(self._live)

    def tenant_count(self, tenant: str) -> int:
        """The tenant's live (and being created) instances."""
        with self._lock:
            return self._counts[tenant]

    def reserve(self, tenant: str) -> Reservation:
        """Holds a slot for an instance about to be created.

        Raises:
            TenantCapacityExhaustedError: the tenant is at its cap.
            InstanceCapacityExhaustedError: the executor is at its cap.
        """
        with self._lock:
            if self._counts[tenant] >= self.max_per_tenant:
                raise TenantCapacityExhaustedError(
                    f"tenant {tenant!r} has {self.max_per_tenant} live instances already",
                    metadata={"tenant": tenant, "limit": str(self.max_per_tenant)},
                )
            if self._counts.total() >= self.max_instances:
                raise InstanceCapacityExhaustedError(
                    "the executor holds its maximum number of live instances",
                    metadata={"limit": str(self.max_instances)},
                )
            self._counts[tenant] += 1
        return Reservation(self, tenant)

    def _unreserve(self, tenant: str) -> None:
        with self._lock:
            self._counts[tenant] -= 1
            if not self._counts[tenant]:
                del self._counts[tenant]

    def _commit(self, live: LiveInstance) -> LiveInstance:
        live.last_used = live.last_checkpoint = self._clock()
        with self._lock:
            if live.id in self._live:
                self._counts[live.tenant] -= 1
                raise AlreadyExistsError(
                    f"instance {live.id} is live here already", metadata={"instance_id": live.id}
                )
            self._live[live.id] = live
        return live

    def checkout(self, instance_id: str, tenant: str) -> LiveInstance:
        """The tenant's instance, marked busy (no expiry) until `checkin`.

        Raises:
            InstanceNotFoundError: no such live instance for this tenant.
        """
        with self._lock:
            live = self._owned(instance_id, tenant)
            live.busy += 1
            live.calls += 1
            return live

    def _owned(self, instance_id: str, tenant: str) -> LiveInstance:
        """The tenant's live instance (the caller holds the lock)."""
        live = self._live.get(instance_id)
        if live is None or live.tenant != tenant:
            raise InstanceNotFoundError(
                f"no live instance {instance_id!r}", metadata={"instance_id": instance_id[:64]}
            )
        return live

    def checkin(self, live: LiveInstance) -> None:
        """Ends a call on `live`; its idle time starts again."""
        with self._lock:
            live.busy -= 1
            live.last_used = self._clock()

    def remove(self, instance_id: str, tenant: str) -> LiveInstance:
        """Unregisters the tenant's instance (the caller terminates it).

        Raises:
            InstanceNotFoundError: no such live instance for this tenant.
        """
        with self._lock:
            live = self._owned(instance_id, tenant)
            self._drop(live)
        return live

    def _drop(self, live: LiveInstance) -> None:
        del self._live[live.id]
        self._counts[live.tenant] -= 1
        if not self._counts[live.tenant]:
            del self._counts[live.tenant]

    def expire(self) -> list[LiveInstance]:
        """Unregisters and returns the instances idle past their TTL (the caller
        terminates them); an instance with a call running or waiting never expires."""
        now = self._clock()
        with self._lock:
            expired = [
                live
                for live in self._live.values()
                if not live.busy and now - live.last_used >= live.idle_ttl_seconds
            ]
            for live in expired:
                self._drop(live)
        return expired

    def due_checkpoints(self) -> list[LiveInstance]:
        """The idle instances whose checkpoint is due: changed since their last one, at
        least `checkpoint_seconds` ago. Each is marked busy (no expiry, no second
        checkpoint) until `checkpointed`."""
        now = self._clock()
        with self._lock:
            due = [
                live
                for live in self._live.values()
                if live.checkpoint_seconds > 0
                and not live.busy
                and live.calls != live.checkpointed_calls
                and now - live.last_checkpoint >= live.checkpoint_seconds
            ]
            for live in due:
                live.busy += 1
        return due

    def checkpointed(self, live: LiveInstance, calls: int | None) -> None:
        """Ends a checkpoint of `live` (`calls`: its call count at the capture, None when
        it failed); its idle time is not reset."""
        with self._lock:
            live.busy -= 1
            live.last_checkpoint = self._clock()
            if calls is not None:
                live.checkpointed_calls = calls

    def drain(self) -> list[LiveInstance]:
        """Unregisters and returns every instance (shutdown)."""
        with self._lock:
            everything = list(self._live.values())
            for live in everything:
                self._drop(live)
        return everything
