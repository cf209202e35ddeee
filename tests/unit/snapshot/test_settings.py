"""Tests of the snapshot store's settings: defaults, environment names, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from tensorwasm_common.settings import SettingsError, load_settings
from tensorwasm_snapshot.settings import SnapshotSettings


def test_defaults() -> None:
    settings = load_settings(SnapshotSettings, "snapshot", environ={})
    assert settings.max_blob_bytes == 256 << 20
    assert settings.chunk_bytes == 1 << 20
    assert settings.compression_level == 3
    assert settings.gc_interval_seconds == 0.0  # no periodic sweep unless asked for
    assert settings.gc_grace_seconds == 3600.0
    assert settings.tenant_quota_bytes == 0  # unlimited


def test_from_environment(tmp_path: Path) -> None:
    settings = load_settings(
        SnapshotSettings,
        "snapshot",
        environ={
            "TENSORWASM_SNAPSHOT_DATA_DIR": str(tmp_path),
            "TENSORWASM_SNAPSHOT_MAX_BLOB_BYTES": str(1 << 30),
            "TENSORWASM_SNAPSHOT_COMPRESSION_LEVEL": "19",
            "TENSORWASM_SNAPSHOT_GC_INTERVAL_SECONDS": "300",
            "TENSORWASM_SNAPSHOT_GC_GRACE_SECONDS": "0.5",
            "TENSORWASM_SNAPSHOT_TENANT_QUOTA_BYTES": "0x100000",
        },
    )
    assert settings.data_dir == tmp_path
    assert settings.max_blob_bytes == 1 << 30
    assert settings.compression_level == 19
    assert settings.gc_interval_seconds == 300.0
    assert settings.gc_grace_seconds == 0.5
    assert settings.tenant_quota_bytes == 1 << 20


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("COMPRESSION_LEVEL", "0"),
        ("COMPRESSION_LEVEL", "23"),
        ("MAX_BLOB_BYTES", "0"),
        ("CHUNK_BYTES", "0"),
        ("CHUNK_BYTES", str(33 << 20)),  # over half of max_message_bytes
        ("GC_INTERVAL_SECONDS", "-1"),
        ("GC_INTERVAL_SECONDS", "nan"),
        ("GC_GRACE_SECONDS", "-0.1"),
        ("GC_GRACE_SECONDS", "inf"),
        ("TENANT_QUOTA_BYTES", "-1"),
    ],
)
def test_invalid(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name.lower()):
        load_settings(SnapshotSettings, "snapshot", environ={f"TENSORWASM_SNAPSHOT_{name}": value})


def test_blob_and_database_urls_default_to_the_data_dir(tmp_path: Path) -> None:
    settings = load_settings(
        SnapshotSettings, "snapshot", environ={"TENSORWASM_SNAPSHOT_DATA_DIR": str(tmp_path)}
    )
    assert settings.resolved_blob_url == f"file://{tmp_path}"
    assert settings.resolved_database_url == f"sqlite://{tmp_path}/index.sqlite3"


def test_s3_and_postgresql_urls() -> None:
    settings = load_settings(
        SnapshotSettings,
        "snapshot",
        environ={
            "TENSORWASM_SNAPSHOT_BLOB_URL": "s3://tw-store/prod?endpoint=http://127.0.0.1:8333",
            "TENSORWASM_SNAPSHOT_DATABASE_URL": "postgresql://tw:secret@db.local:5432/store",
        },
    )
    assert settings.resolved_blob_url.startswith("s3://tw-store/prod")
    assert settings.resolved_database_url.startswith("postgresql://")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BLOB_URL", "relative/dir"),
        ("BLOB_URL", "file://relative"),
        ("BLOB_URL", "s3://x/prefix"),  # bucket names are 3-63 characters
        ("BLOB_URL", "s3://bucket/p?endpoint=ftp://host"),
        ("BLOB_URL", "s3://bucket/p?region=eu"),
        ("DATABASE_URL", "mysql://u@h/db"),
        ("DATABASE_URL", "sqlite://relative.db"),
    ],
)
def test_bad_urls_name_their_setting(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"TENSORWASM_SNAPSHOT_{name}"):
        load_settings(SnapshotSettings, "snapshot", environ={f"TENSORWASM_SNAPSHOT_{name}": value})
