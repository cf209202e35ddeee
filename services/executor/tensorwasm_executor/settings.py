"""Settings of the executor, from TENSORWASM_EXECUTOR_* variables."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from tensorwasm_common.paths import default_data_dir
from tensorwasm_common.settings import ServerSettings, SettingsError, split_address


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExecutorSettings(ServerSettings):
    """Where modules come from and how guests are run."""

    listen_address: str = "127.0.0.1:50052"
    snapshot_address: str = "127.0.0.1:50054"
    # Guest threads: independent of the CPU count, so that tenants below their running
    # share always find a free worker (guests run in wasmtime, outside the GIL).
    workers: int = dataclasses.field(default_factory=lambda: max(8, 4 * (os.cpu_count() or 2)))
    # Guests one tenant may run at once (0: half the CPUs, at least 1, below `workers`);
    # its further admitted calls wait in its own queue (scheduling.FairPool).
    max_running_per_tenant: int = 0
    # Threads that load and compile modules and capture images (0: the CPU count, at
    # least 2), and how many of them one tenant may hold (0: half, at least 1).
    compile_workers: int = 0
    max_compiles_per_tenant: int = 0
    default_timeout_seconds: float = 10.0
    max_timeout_seconds: float = 300.0
    max_output_bytes: int = 1 << 20
    module_cache_entries: int = 256
    max_memory_bytes: int = 256 << 20
    max_table_elements: int = 100_000
    fuel_metering: bool = False
    # One JSON log line per call received (Invoke, InvokeStream, instances), with the
    # caller's x-request-id: the gateway's request id, for at-most-once evidence.
    call_log: bool = False
    # 0: derived from workers (twice the workers in flight; half of that per tenant).
    max_in_flight: int = 0
    max_in_flight_per_tenant: int = 0
    epoch_tick_seconds: float = 0.01
    # Fresh unary calls of an export whose recent runs all took less than this run on the
    # event loop, without the hop to a worker thread, and are stopped and run again on a
    # worker if they overrun it (inline.py); 0: every call goes to a worker.
    inline_budget_seconds: float = 0.001
    # Consecutive runs under the budget before an export's calls run inline.
    inline_qualify_calls: int = 8
    # Read-only directories a function may be granted live under <root>/<tenant>/;
    # empty: no guest ever gets a filesystem.
    guest_dirs_root: Path | None = None
    # Compiled artifacts (per engine fingerprint), reloaded with Module.deserialize_file.
    artifact_dir: Path | None = dataclasses.field(
        default_factory=lambda: default_data_dir() / "executor" / "artifacts"
    )
    # The most bytes of artifact files kept there: the least recently used go first (a
    # module whose file went is restored from the store or compiled again); 0: no cap.
    artifact_dir_max_bytes: int = 1 << 30
    # Pre-initialised instance images (per engine fingerprint), memory-mapped on load, and
    # how many decoded images are kept in memory.
    image_dir: Path | None = dataclasses.field(
        default_factory=lambda: default_data_dir() / "executor" / "images"
    )
    image_cache_entries: int = 32
    # The most bytes of image files kept there: the least recently used go first (an image
    # whose file went is read from the store again, or init runs again); 0: no cap.
    image_dir_max_bytes: int = 1 << 30
    max_instances: int = 1000
    max_instances_per_tenant: int = 100
    instance_idle_ttl_seconds: float = 300.0
    max_instance_idle_ttl_seconds: float = 3600.0
    instance_sweep_seconds: float = 1.0
    # The GPU path: the dispatcher guests' `wasi:cuda` calls go to (empty: none, and every
    # `wasi:cuda` call answers not_available), and when a guest's batch is full.
    dispatcher_address: str = ""
    gpu_batch_max_commands: int = 256
    gpu_batch_max_bytes: int = 64 << 20
    dispatcher_max_message_bytes: int = 96 << 20
    # The jit cache `tensorwasm:gpu` kernels come from (empty: none, and those functions
    # answer not_available), and the GPU target they are emitted for.
    jit_address: str = ""
    jit_target: str = "sm_80"

    @property
    def in_flight_limit(self) -> int:
        """Calls admitted at once (running and waiting for a worker)."""
        return self.max_in_flight or 2 * self.workers

    @property
    def tenant_running_limit(self) -> int:
        """Guests one tenant may run at once; the rest of its calls wait their turn."""
        if self.max_running_per_tenant:
            return self.max_running_per_tenant
        return max(1, min(self.workers - 1, (os.cpu_count() or 2) // 2))

    @property
    def compile_limit(self) -> int:
        """Threads of the compile pool."""
        return self.compile_workers or max(2, os.cpu_count() or 2)

    @property
    def tenant_compile_limit(self) -> int:
        """Compile threads one tenant may hold at once."""
        return self.max_compiles_per_tenant or max(1, self.compile_limit // 2)

    @property
    def tenant_in_flight_limit(self) -> int:
        """Calls one tenant may have admitted at once."""
        return self.max_in_flight_per_tenant or max(1, self.in_flight_limit // 2)

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            split_address(self.snapshot_address)
        except SettingsError as exc:
            raise SettingsError(f"snapshot_address: {exc}") from None
        self._check_gpu()
        self._check_scheduling()
        if not 0 < self.default_timeout_seconds <= self.max_timeout_seconds:
            raise SettingsError("default_timeout_seconds: must be in (0, max_timeout_seconds]")
        for cap in ("artifact_dir_max_bytes", "image_dir_max_bytes"):
            if getattr(self, cap) < 0:
                raise SettingsError(f"{cap}: must be >= 0 (0: no cap)")
        if self.image_cache_entries <= 0:
            raise SettingsError("image_cache_entries: must be positive")
        if self.max_output_bytes < 0 or self.module_cache_entries <= 0:
            raise SettingsError("max_output_bytes and module_cache_entries must be positive")
        if self.max_memory_bytes < 1 << 16 or self.max_table_elements < 0:
            raise SettingsError("max_memory_bytes: at least one wasm page (65536)")
        if self.max_instances <= 0 or self.max_instances_per_tenant <= 0:
            raise SettingsError("max_instances and max_instances_per_tenant must be positive")
        if not 0 < self.instance_idle_ttl_seconds <= self.max_instance_idle_ttl_seconds:
            raise SettingsError(
                "instance_idle_ttl_seconds: must be in (0, max_instance_idle_ttl_seconds]"
            )
        if self.instance_sweep_seconds <= 0:
            raise SettingsError("instance_sweep_seconds: must be positive")
        self._check_ticks()

    def _check_ticks(self) -> None:
        if not 0.001 <= self.epoch_tick_seconds <= 1.0:
            raise SettingsError("epoch_tick_seconds: must be in [0.001, 1]")
        if not 0 <= self.inline_budget_seconds <= 0.1:
            raise SettingsError("inline_budget_seconds: must be in [0, 0.1] (0: never inline)")
        if self.inline_qualify_calls < 1:
            raise SettingsError("inline_qualify_calls: must be positive")

    def _check_scheduling(self) -> None:
        if self.workers <= 0:
            raise SettingsError("workers: must be positive")
        if self.max_in_flight < 0 or self.max_in_flight_per_tenant < 0:
            raise SettingsError("max_in_flight and max_in_flight_per_tenant must be >= 0")
        if self.compile_workers < 0 or self.max_compiles_per_tenant < 0:
            raise SettingsError("compile_workers and max_compiles_per_tenant must be >= 0")
        if not 0 <= self.max_running_per_tenant <= self.workers:
            raise SettingsError("max_running_per_tenant: must be in [0, workers]")

    def _check_gpu(self) -> None:
        if self.dispatcher_address:
            try:
                split_address(self.dispatcher_address)
            except SettingsError as exc:
                raise SettingsError(f"dispatcher_address: {exc}") from None
        if self.jit_address:
            try:
                split_address(self.jit_address)
            except SettingsError as exc:
                raise SettingsError(f"jit_address: {exc}") from None
        if not self.jit_target.startswith("sm_") or not self.jit_target[3:].isdigit():
            raise SettingsError("jit_target: a GPU target such as sm_80")
        if self.gpu_batch_max_commands <= 0 or self.gpu_batch_max_bytes <= 0:
            raise SettingsError("gpu_batch_max_commands and gpu_batch_max_bytes: positive")
        if self.dispatcher_max_message_bytes < self.gpu_batch_max_bytes + (1 << 20):
            raise SettingsError(
                "dispatcher_max_message_bytes: at least gpu_batch_max_bytes + 1 MiB"
            )
