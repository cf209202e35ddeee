"""Settings of the dispatcher, from TENSORWASM_DISPATCHER_* variables."""

from __future__ import annotations

import dataclasses

from tensorwasm_common.settings import ServerSettings, SettingsError


@dataclasses.dataclass(frozen=True, kw_only=True)
class DispatcherSettings(ServerSettings):
    """Which backend runs kernels: `auto` (cuda when a device answers), `cuda` or `cpu`."""

    listen_address: str = "127.0.0.1:50053"
    backend: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend not in {"auto", "cuda", "cpu"}:
            raise SettingsError(f"backend: expected auto, cuda or cpu, got {self.backend!r}")
