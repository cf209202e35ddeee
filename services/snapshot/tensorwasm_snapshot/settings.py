"""Settings of the snapshot store, from TENSORWASM_SNAPSHOT_* variables."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tensorwasm_common.paths import default_data_dir
from tensorwasm_common.settings import ServerSettings, SettingsError


@dataclasses.dataclass(frozen=True, kw_only=True)
class SnapshotSettings(ServerSettings):
    """Where blobs live and how they are stored."""

    listen_address: str = "127.0.0.1:50054"
    data_dir: Path = dataclasses.field(default_factory=lambda: default_data_dir() / "snapshot")
    compression_level: int = 3
    max_blob_bytes: int = 256 << 20
    chunk_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.compression_level <= 22:
            raise SettingsError("compression_level: must be in [1, 22]")
        if self.max_blob_bytes <= 0 or self.chunk_bytes <= 0:
            raise SettingsError("max_blob_bytes and chunk_bytes must be positive")
        if self.chunk_bytes > self.max_message_bytes // 2:
            raise SettingsError("chunk_bytes: must be at most half of max_message_bytes")
