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
