"""Settings of the jit cache, from TENSORWASM_JIT_* variables."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tensorwasm_common.settings import ServerSettings, SettingsError


@dataclasses.dataclass(frozen=True, kw_only=True)
class JitSettings(ServerSettings):
    """The cache's bounds and where it persists kernels and artifacts."""

    listen_address: str = "127.0.0.1:50055"
    # Memory tier: at most this many kernels and this many PTX bytes.
    cache_entries: int = 1024
    cache_max_bytes: int = 64 << 20
    # Disk tier: kernels under <data_dir>/kernels, artifacts under <data_dir>/artifacts;
    # unset keeps both in memory only (lost at restart).
    data_dir: Path | None = None
    disk_max_bytes: int = 1 << 30
    artifact_max_bytes: int = 4 << 30
    max_artifact_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cache_entries <= 0 or self.cache_max_bytes <= 0:
            raise SettingsError("cache_entries and cache_max_bytes: must be positive")
        if self.disk_max_bytes <= 0 or self.artifact_max_bytes <= 0:
            raise SettingsError("disk_max_bytes and artifact_max_bytes: must be positive")
        if not 0 < self.max_artifact_bytes <= min(self.artifact_max_bytes, self.max_message_bytes):
            raise SettingsError(
                "max_artifact_bytes: positive, at most artifact_max_bytes and max_message_bytes"
            )
