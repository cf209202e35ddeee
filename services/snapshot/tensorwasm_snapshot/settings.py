"""Settings of the snapshot store, from TENSORWASM_SNAPSHOT_* variables."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tensorwasm_common.database import DatabaseUrlError, parse_database_url, sqlite_url
from tensorwasm_common.paths import default_data_dir
from tensorwasm_common.settings import ServerSettings, SettingsError

from tensorwasm_snapshot.backends.base import BlobLocationError, parse_blob_url

MIN_SIGNING_KEY_BYTES = 32


@dataclasses.dataclass(frozen=True, kw_only=True)
class SnapshotSettings(ServerSettings):
    """Where blobs live, how they are stored, how long garbage is kept, what tenants may hold.

    `blob_url` is where blob files live: `file:///ABS/PATH` or
    `s3://BUCKET/PREFIX?endpoint=http://HOST:PORT` (credentials and region from the standard
    AWS_* variables); empty is `file://<data_dir>`. The index stays in `data_dir` whatever
    the backend, unless `database_url` names another one: `sqlite:///ABS/PATH` or
    `postgresql://USER[:PASSWORD]@HOST:PORT/DB` (so that several store replicas share it);
    empty is `data_dir/index.sqlite3`. An s3 backend spools uploads and downloads in
    `data_dir/tmp`. `max_blob_bytes` caps
    each object's plaintext (declared and actual, on put and on read);
    `gc_interval_seconds` 0 turns the periodic sweep off (CollectGarbage still works);
    `tenant_quota_bytes` 0 is unlimited; `signing_key_file` (its bytes, at least 32, a trailing
    newline dropped) turns on HMAC-SHA256 signing of snapshot records: then records are signed
    and only correctly signed ones are read.
    """

    listen_address: str = "127.0.0.1:50054"
    data_dir: Path = dataclasses.field(default_factory=lambda: default_data_dir() / "snapshot")
    blob_url: str = ""
    database_url: str = ""
    compression_level: int = 3
    max_blob_bytes: int = 256 << 20
    chunk_bytes: int = 1 << 20
    gc_interval_seconds: float = 0.0
    gc_grace_seconds: float = 3600.0
    tenant_quota_bytes: int = 0
    signing_key_file: Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            parse_blob_url(self.resolved_blob_url)
        except BlobLocationError as exc:
            raise SettingsError(str(exc)) from None
        try:
            parse_database_url(self.resolved_database_url, "TENSORWASM_SNAPSHOT_DATABASE_URL")
        except DatabaseUrlError as exc:
            raise SettingsError(str(exc)) from None
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
        if self.signing_key_file is not None:
            self.signing_key()  # fail fast on a missing or short key file

    @property
    def resolved_blob_url(self) -> str:
        """`blob_url`, or the data directory as a file URL when it is empty."""
        return self.blob_url or f"file://{self.data_dir.absolute()}"

    @property
    def resolved_database_url(self) -> str:
        """`database_url`, or the SQLite file in the data directory when it is empty."""
        return self.database_url or sqlite_url(self.data_dir / "index.sqlite3")

    def signing_key(self) -> bytes | None:
        """The HMAC key of snapshot records, or None when signing is off."""
        if self.signing_key_file is None:
            return None
        try:
            key = self.signing_key_file.read_bytes().removesuffix(b"\n")
        except OSError as exc:
            raise SettingsError(f"signing_key_file: cannot read it: {exc}") from exc
        if len(key) < MIN_SIGNING_KEY_BYTES:
            raise SettingsError(f"signing_key_file: need at least {MIN_SIGNING_KEY_BYTES} bytes")
        return key
