"""Settings of the dispatcher, from TENSORWASM_DISPATCHER_* variables."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from tensorwasm_common.settings import ServerSettings, SettingsError, split_address


@dataclasses.dataclass(frozen=True, kw_only=True)
class DispatcherSettings(ServerSettings):
    """Which backend runs kernels (`auto`: cuda when a device answers, else cpu), and the
    per-tenant limits: staged-memory quota, requests in flight, idle sessions."""

    listen_address: str = "127.0.0.1:50053"
    backend: str = "auto"
    # A batch stages up to 64 MiB and carries up to 256 commands: room for both.
    max_message_bytes: int = 96 << 20
    # Bytes one tenant may have staged at once, across its requests in flight.
    tenant_memory_quota_bytes: int = 1 << 30
    # Requests in flight (running or waiting for a worker); more are refused with
    # RESOURCE_EXHAUSTED + RetryInfo. 0 per tenant: half of max_in_flight.
    max_in_flight: int = 64
    max_in_flight_per_tenant: int = 0
    retry_after_seconds: float = 0.05
    # Threads that run batches (the event loop never runs a kernel).
    workers: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 2)
    # Fair scheduling (deficit round robin over per-tenant queues): the commands a tenant
    # may run per turn before the next tenant with queued batches is served.
    fair_quantum_commands: int = 256
    # A session nobody ended (its executor died) is closed after this much idle time.
    session_idle_ttl_seconds: float = 600.0
    session_sweep_seconds: float = 5.0
    # GPU sessions one tenant may hold open at once (each holds a stream and events).
    max_sessions_per_tenant: int = 64
    # The longest a batch may run when its call has a later deadline (or none): a launch
    # still running then fails and its session is ended.
    max_run_seconds: float = 300.0
    # The jit cache cubins are shared through, per (PTX digest, compute capability), on the
    # cuda backend (empty: off, every PTX is JIT-compiled by this dispatcher's driver).
    jit_address: str = ""
    jit_timeout_seconds: float = 2.0
    # The in-process LRU of cubins loaded through sharing, in bytes (0: none kept, every
    # load asks the jit cache).
    cubin_cache_bytes: int = 64 << 20
    # How the cpu backend runs the kernels it recognises (the kernel library's and the jit
    # cache's): `ptx` through the PTX executor, as written; `reference` by their NumPy
    # references. Any other PTX runs through the executor either way.
    cpu_kernels: str = "ptx"
    # How long one launch may run on the cpu backend's PTX executor before it is stopped.
    cpu_launch_timeout_seconds: float = 60.0
    # Where batches run: `tenant`, a worker process per tenant (its own CUDA context, so a
    # fault, sticky error, crash or hung kernel ends that tenant's worker only, and no
    # tenant can address another's device memory); `shared`, one worker process for all
    # tenants (the dispatcher survives a crash, tenants do not have their own contexts);
    # `off`, in the dispatcher's process. `auto`: `tenant` on the cuda backend, `off` on the
    # cpu backend (which has no device context to share).
    worker_isolation: str = "auto"
    # Worker processes at most; at the cap the least recently used idle one is stopped.
    max_workers: int = 16
    # A worker idle this long is stopped (one holding sessions: once their TTL passed too).
    worker_idle_seconds: float = 300.0
    # Threads of each worker process that run its batches.
    worker_threads: int = 4
    # With MIG instances, which one a tenant's worker gets: `hash` (stable per tenant) or
    # `spread` (the least used); `mig_assignments` (`TENANT=MIG-UUID,...`) pins tenants.
    mig_placement: str = "hash"
    mig_assignments: str = ""
    # Under an MPS control daemon, each worker's CUDA_MPS_ACTIVE_THREAD_PERCENTAGE: the
    # default, or per tenant from `mps_tenant_percentages` (`TENANT=PERCENT,...`).
    mps_thread_percentage: int = 100
    mps_tenant_percentages: str = ""

    @property
    def mig_assignment_map(self) -> dict[str, str]:
        """`mig_assignments` as tenant -> MIG instance UUID."""
        return _tenant_map(self.mig_assignments, "mig_assignments", str)

    @property
    def mps_percentage_map(self) -> dict[str, str]:
        """`mps_tenant_percentages` as tenant -> percentage."""
        return _tenant_map(self.mps_tenant_percentages, "mps_tenant_percentages", _percentage)

    @property
    def tenant_in_flight_limit(self) -> int:
        """Requests one tenant may have in flight."""
        return self.max_in_flight_per_tenant or max(1, self.max_in_flight // 2)

    def __post_init__(self) -> None:  # noqa: PLR0912 (one check per setting)
        super().__post_init__()
        if self.backend not in {"auto", "cuda", "cpu"}:
            raise SettingsError(f"backend: expected auto, cuda or cpu, got {self.backend!r}")
        if self.tenant_memory_quota_bytes < 0:
            raise SettingsError("tenant_memory_quota_bytes: must be >= 0")
        if self.max_in_flight <= 0 or self.max_in_flight_per_tenant < 0:
            raise SettingsError("max_in_flight must be positive, max_in_flight_per_tenant >= 0")
        if not 0 < self.retry_after_seconds <= 60:
            raise SettingsError("retry_after_seconds: must be in (0, 60]")
        if self.workers <= 0:
            raise SettingsError("workers: must be positive")
        if self.fair_quantum_commands <= 0:
            raise SettingsError("fair_quantum_commands: must be positive")
        if self.session_idle_ttl_seconds <= 0 or self.session_sweep_seconds <= 0:
            raise SettingsError("session_idle_ttl_seconds and session_sweep_seconds: positive")
        if self.max_sessions_per_tenant <= 0 or self.max_run_seconds <= 0:
            raise SettingsError("max_sessions_per_tenant and max_run_seconds: positive")
        if self.jit_address:
            try:
                split_address(self.jit_address)
            except SettingsError as exc:
                raise SettingsError(f"jit_address: {exc}") from None
        if not 0 < self.jit_timeout_seconds <= 60:
            raise SettingsError("jit_timeout_seconds: must be in (0, 60]")
        if self.cpu_kernels not in {"ptx", "reference"}:
            raise SettingsError(f"cpu_kernels: expected ptx or reference, got {self.cpu_kernels!r}")
        if not 0 < self.cpu_launch_timeout_seconds <= 3600:
            raise SettingsError("cpu_launch_timeout_seconds: must be in (0, 3600]")
        self._check_workers()
        if self.cubin_cache_bytes < 0:
            raise SettingsError("cubin_cache_bytes: must be >= 0")

    def _check_workers(self) -> None:
        if self.worker_isolation not in {"auto", "tenant", "shared", "off"}:
            raise SettingsError(
                f"worker_isolation: expected auto, tenant, shared or off, got "
                f"{self.worker_isolation!r}"
            )
        if self.max_workers <= 0 or self.worker_threads <= 0:
            raise SettingsError("max_workers and worker_threads: must be positive")
        if self.worker_idle_seconds <= 0:
            raise SettingsError("worker_idle_seconds: must be positive")
        if self.mig_placement not in {"hash", "spread"}:
            raise SettingsError(
                f"mig_placement: expected hash or spread, got {self.mig_placement!r}"
            )
        if not 1 <= self.mps_thread_percentage <= 100:
            raise SettingsError("mps_thread_percentage: must be in [1, 100]")
        self.mig_assignment_map  # noqa: B018 - checks the format
        self.mps_percentage_map  # noqa: B018


def _percentage(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 100:
        raise ValueError("a percentage must be in [1, 100]")
    return value


def _tenant_map(text: str, what: str, value: Callable[[str], object]) -> dict[str, str]:
    """`TENANT=VALUE,...` as a dict, each value checked by `value`.

    Raises:
        SettingsError: an entry without `=`, an empty side, or a bad value (naming `what`).
    """
    found: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        tenant, sep, raw = entry.partition("=")
        if not sep or not tenant.strip() or not raw.strip():
            raise SettingsError(f"{what}: expected TENANT=VALUE entries, got {entry!r}")
        try:
            value(raw.strip())
        except ValueError as exc:
            raise SettingsError(f"{what}: {entry!r}: {exc}") from None
        found[tenant.strip()] = raw.strip()
    return found
