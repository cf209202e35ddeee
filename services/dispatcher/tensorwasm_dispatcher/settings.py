"""Settings of the dispatcher, from TENSORWASM_DISPATCHER_* variables."""

from __future__ import annotations

import dataclasses
import os

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
        if self.cubin_cache_bytes < 0:
            raise SettingsError("cubin_cache_bytes: must be >= 0")
