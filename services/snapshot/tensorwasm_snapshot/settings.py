"""Settings of the snapshot store, from TENSORWASM_SNAPSHOT_* variables."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tensorwasm_common.paths import default_data_dir
from tensorwasm_common.settings import ServerSettings, SettingsError


@dataclasses.dataclass(frozen=True, kw_only=True)
class SnapshotSettings(ServerSettings):
    """Where blobs live, how they are stored, how long garbage is kept, what tenants may hold.

    `max_blob_bytes` caps each object's plaintext (declared and actual, on put and on read);
    `gc_interval_seconds` 0 turns the periodic sweep off (CollectGarbage still works);
    `tenant_quota_bytes` 0 is unlimited.
    """

    listen_address: str = "127.0.0.1:50054"
    data_dir: Path = dataclasses.field(default_factory=lambda: default_data_dir() / "snapshot")
    compression_level: int = 3
    max_blob_bytes: int = 256 << 20
    chunk_bytes: int = 1 << 20
    gc_interval_seconds: float = 0.0
    gc_grace_seconds: float = 3600.0
    tenant_quota_bytes: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.compression_level <= 22:
            raise SettingsError("compression_level: must be in [1, 22]")
        if self.max_blob_bytes <= 0 or self.chunk_bytes <= 0:
            raise SettingsError("max_blob_bytes and chunk_bytes must be positive")
        if self.chunk_bytes > self.max_message_bytes // 2:
            raise SettingsError("chunk_bytes: must be at most half of max_message_bytes")
        if not 0 <= self.gc_interval_seconds < float("inf"):
            raise SettingsError("gc_interval_seconds: must be >= 0 (0 turns the sweep off)")
        if not 0 <= self.gc_grace_seconds < float("inf"):
            raise SettingsError("gc_grace_seconds: must be >= 0")
        if self.tenant_quota_bytes < 0:
            raise SettingsError("tenant_quota_bytes: must be >= 0 (0 is unlimited)")
