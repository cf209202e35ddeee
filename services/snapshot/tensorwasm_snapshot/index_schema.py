"""The index's schema as versioned migrations (component `snapshot`), one step per engine.

Version 1 is the schema the store had before migrations (SQLite `user_version` 2: objects,
references, snapshot records), written with IF NOT EXISTS so that an index made by an
older release is adopted as it is.
"""

from __future__ import annotations

from tensorwasm_common.database import Migration

COMPONENT = "snapshot"

_SQLITE_V1 = """
CREATE TABLE IF NOT EXISTS objects (
    digest TEXT PRIMARY KEY,
    size_bytes INTEGER NOT NULL,
    stored_size_bytes INTEGER NOT NULL,
    create_time_ns INTEGER NOT NULL,
    touch_time_ns INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS refs (
    tenant TEXT NOT NULL,
    digest TEXT NOT NULL REFERENCES objects (digest) ON DELETE CASCADE,
    ref_name TEXT NOT NULL,
    create_time_ns INTEGER NOT NULL,
    PRIMARY KEY (tenant, digest, ref_name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS refs_by_digest ON refs (digest);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    kind INTEGER NOT NULL,
    engine_fingerprint TEXT NOT NULL,
    source_digest TEXT NOT NULL,
    variant TEXT NOT NULL,
    payload_digest TEXT NOT NULL,
    payload_size_bytes INTEGER NOT NULL,
    record_digest TEXT NOT NULL REFERENCES objects (digest) ON DELETE CASCADE,
    record_size_bytes INTEGER NOT NULL,
    create_time_ns INTEGER NOT NULL,
    format_version INTEGER NOT NULL,
    signed INTEGER NOT NULL,
    UNIQUE (tenant, kind, source_digest, variant, engine_fingerprint)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS snapshots_by_time ON snapshots (tenant, create_time_ns, id);
CREATE INDEX IF NOT EXISTS snapshots_by_record ON snapshots (record_digest);
PRAGMA user_version = 2
"""

_POSTGRESQL_V1 = """
CREATE TABLE IF NOT EXISTS objects (
    digest TEXT PRIMARY KEY,
    size_bytes BIGINT NOT NULL,
    stored_size_bytes BIGINT NOT NULL,
    create_time_ns BIGINT NOT NULL,
    touch_time_ns BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS refs (
    tenant TEXT NOT NULL,
    digest TEXT NOT NULL REFERENCES objects (digest) ON DELETE CASCADE,
    ref_name TEXT NOT NULL,
    create_time_ns BIGINT NOT NULL,
    PRIMARY KEY (tenant, digest, ref_name)
);
CREATE INDEX IF NOT EXISTS refs_by_digest ON refs (digest);
CREATE TABLE IF NOT EXISTS snapshots (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    kind INTEGER NOT NULL,
    engine_fingerprint TEXT NOT NULL,
    source_digest TEXT NOT NULL,
    variant TEXT NOT NULL,
    payload_digest TEXT NOT NULL,
    payload_size_bytes BIGINT NOT NULL,
    record_digest TEXT NOT NULL REFERENCES objects (digest) ON DELETE CASCADE,
    record_size_bytes BIGINT NOT NULL,
    create_time_ns BIGINT NOT NULL,
    format_version INTEGER NOT NULL,
    signed INTEGER NOT NULL,
    UNIQUE (tenant, kind, source_digest, variant, engine_fingerprint)
);
CREATE INDEX IF NOT EXISTS snapshots_by_time ON snapshots (tenant, create_time_ns, id);
CREATE INDEX IF NOT EXISTS snapshots_by_record ON snapshots (record_digest)
"""

MIGRATIONS = (Migration(1, "objects, refs, snapshots", _SQLITE_V1, _POSTGRESQL_V1),)
