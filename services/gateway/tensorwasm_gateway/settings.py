"""Settings of the gateway, from TENSORWASM_GATEWAY_* variables."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tensorwasm_common.paths import default_data_dir
from tensorwasm_common.settings import ServerSettings, SettingsError, split_address


@dataclasses.dataclass(frozen=True, kw_only=True)
class GatewaySettings(ServerSettings):
    """Where the registry lives and which backends the gateway talks to."""

    listen_address: str = "127.0.0.1:50051"
    executor_addresses: tuple[str, ...] = ("127.0.0.1:50052",)
    # A DNS name `host:port` whose every address is an executor replica (replaces
    # executor_addresses when set), re-resolved every executor_resolve_interval_seconds.
    executor_dns: str = ""
    executor_resolve_interval_seconds: float = 10.0
    executor_health_interval_seconds: float = 2.0
    # Bounded load: a replica holding more than this x the average calls is skipped.
    executor_load_factor: float = 1.25
    snapshot_address: str = "127.0.0.1:50054"
    database_path: Path = dataclasses.field(
        default_factory=lambda: default_data_dir() / "gateway" / "registry.sqlite3"
    )
    max_module_bytes: int = 32 << 20
    downstream_timeout_seconds: float = 330.0
    # The HTTP/JSON face (the original's REST routes); empty: off.
    http_address: str = "127.0.0.1:8080"
    # Finished async invocations are kept this long, then purged.
    invocation_retention_seconds: float = 86400.0
    # At most this many async invocations pending or running at once (per gateway).
    max_unfinished_invocations: int = 1000
    # JSON limit ceilings per tenant (see tensorwasm_gateway.limits); none when unset.
    tenant_limits_file: Path | None = None

    def __post_init__(self) -> None:  # noqa: PLR0912 (one check per setting)
        super().__post_init__()
        if not self.executor_addresses and not self.executor_dns:
            raise SettingsError("executor_addresses: at least one executor is required")
        if self.executor_dns:
            try:
                split_address(self.executor_dns)
            except SettingsError as exc:
                raise SettingsError(f"executor_dns: {exc}") from None
        if not 0.1 <= self.executor_resolve_interval_seconds < float("inf"):
            raise SettingsError("executor_resolve_interval_seconds: must be >= 0.1")
        if not 0.1 <= self.executor_health_interval_seconds < float("inf"):
            raise SettingsError("executor_health_interval_seconds: must be >= 0.1")
        if not 1.0 <= self.executor_load_factor < float("inf"):
            raise SettingsError("executor_load_factor: must be >= 1.0")
        if self.http_address:
            try:
                split_address(self.http_address)
            except SettingsError as exc:
                raise SettingsError(f"http_address: {exc}") from None
        if not 1.0 <= self.invocation_retention_seconds < float("inf"):
            raise SettingsError("invocation_retention_seconds: must be >= 1")
        if self.max_unfinished_invocations < 1:
            raise SettingsError("max_unfinished_invocations: must be >= 1")
        for address in (*self.executor_addresses, self.snapshot_address):
            try:
                split_address(address)
            except SettingsError as exc:
                raise SettingsError(f"executor_addresses/snapshot_address: {exc}") from None
        if not 8 <= self.max_module_bytes <= self.max_message_bytes:
            raise SettingsError("max_module_bytes: must be in [8, max_message_bytes]")
        from tensorwasm_gateway.limits import TenantCeilings  # (it imports these settings' errors)

        TenantCeilings.load(self.tenant_limits_file)  # a malformed file fails at start
