"""Settings of the jit cache, from TENSORWASM_JIT_* variables."""

from __future__ import annotations

import dataclasses

from tensorwasm_common.settings import ServerSettings, SettingsError


@dataclasses.dataclass(frozen=True, kw_only=True)
class JitSettings(ServerSettings):
    """How many kernels the in-memory cache keeps."""

    listen_address: str = "127.0.0.1:50055"
    cache_entries: int = 1024

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cache_entries <= 0:
            raise SettingsError("cache_entries: must be positive")
