"""The gateway's schema, as versioned migrations for SQLite and PostgreSQL.

Version 1 is the schema the gateway had before versioned migrations: on SQLite its step
creates what is missing and adds the columns older releases lacked, so a database made by
any earlier release (which has no `schema_migrations` table) becomes version 1 in place.
"""

from __future__ import annotations

from tensorwasm_common.database import Migration, Session

COMPONENT = "gateway"

# Invocation states (tensorwasm_gateway.invocations.store.InvocationState): PENDING, RUNNING.
_UNFINISHED = "1, 2"

_SQLITE_V1 = """
CREATE TABLE IF NOT EXISTS functions (
    tenant TEXT NOT NULL,
    function_id TEXT NOT NULL,
    module_digest TEXT NOT NULL,
    module_size_bytes INTEGER NOT NULL,
    exports_json TEXT NOT NULL,
    create_time_ns INTEGER NOT NULL,
    config BLOB NOT NULL DEFAULT x'',
    PRIMARY KEY (tenant, function_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS instances (
    tenant TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    function_id TEXT NOT NULL,
    module_digest TEXT NOT NULL,
    executor TEXT NOT NULL,
    idle_ttl_ns INTEGER NOT NULL,
    create_time_ns INTEGER NOT NULL,
    PRIMARY KEY (tenant, instance_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS invocations (
    tenant TEXT NOT NULL,
    invocation_id TEXT NOT NULL,
    function_id TEXT NOT NULL,
    export_name TEXT NOT NULL,
    state INTEGER NOT NULL,
    request_id TEXT,
    outcome BLOB NOT NULL DEFAULT x'',
    error BLOB NOT NULL DEFAULT x'',
    create_time_ns INTEGER NOT NULL,
    end_time_ns INTEGER,
    expire_time_ns INTEGER,
    owner TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, invocation_id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS invocations_by_request_id
    ON invocations (tenant, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS invocations_by_expiry
    ON invocations (expire_time_ns) WHERE expire_time_ns IS NOT NULL;
CREATE TABLE IF NOT EXISTS gateways (
    gateway_id TEXT PRIMARY KEY,
    start_time_ns INTEGER NOT NULL,
    last_seen_ns INTEGER NOT NULL,
    lease_expire_ns INTEGER NOT NULL,
    renewals INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pending_releases (
    tenant TEXT NOT NULL,
    digest TEXT NOT NULL,
    ref_name TEXT NOT NULL,
    since_ns INTEGER NOT NULL,
    PRIMARY KEY (tenant, digest, ref_name)
) WITHOUT ROWID
"""
_SQLITE_V1_INDEX = f"""
CREATE INDEX IF NOT EXISTS invocations_unfinished_by_owner
    ON invocations (owner) WHERE state IN ({_UNFINISHED})
"""
# Columns added after a table's first release (rows from before have no invocation owner
# (''), which holds no lease, so the first gateway to start fails them as interrupted).
_SQLITE_LATE_COLUMNS = (
    ("functions", "config", "BLOB NOT NULL DEFAULT x''"),
    ("invocations", "owner", "TEXT NOT NULL DEFAULT ''"),
    ("gateways", "renewals", "INTEGER NOT NULL DEFAULT 0"),
)

_POSTGRES_V1 = f"""
CREATE TABLE functions (
    tenant TEXT NOT NULL,
    function_id TEXT NOT NULL,
    module_digest TEXT NOT NULL,
    module_size_bytes BIGINT NOT NULL,
    exports_json TEXT NOT NULL,
    create_time_ns BIGINT NOT NULL,
    config BYTEA NOT NULL DEFAULT '\\x',
    PRIMARY KEY (tenant, function_id)
);
CREATE TABLE instances (
    tenant TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    function_id TEXT NOT NULL,
    module_digest TEXT NOT NULL,
    executor TEXT NOT NULL,
    idle_ttl_ns BIGINT NOT NULL,
    create_time_ns BIGINT NOT NULL,
    PRIMARY KEY (tenant, instance_id)
);
CREATE TABLE invocations (
    tenant TEXT NOT NULL,
    invocation_id TEXT NOT NULL,
    function_id TEXT NOT NULL,
    export_name TEXT NOT NULL,
    state INTEGER NOT NULL,
    request_id TEXT,
    outcome BYTEA NOT NULL DEFAULT '\\x',
    error BYTEA NOT NULL DEFAULT '\\x',
    create_time_ns BIGINT NOT NULL,
    end_time_ns BIGINT,
    expire_time_ns BIGINT,
    owner TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, invocation_id)
);
CREATE UNIQUE INDEX invocations_by_request_id
    ON invocations (tenant, request_id) WHERE request_id IS NOT NULL;
CREATE INDEX invocations_by_expiry
    ON invocations (expire_time_ns) WHERE expire_time_ns IS NOT NULL;
CREATE INDEX invocations_unfinished_by_owner
    ON invocations (owner) WHERE state IN ({_UNFINISHED});
CREATE TABLE gateways (
    gateway_id TEXT PRIMARY KEY,
    start_time_ns BIGINT NOT NULL,
    last_seen_ns BIGINT NOT NULL,
    lease_expire_ns BIGINT NOT NULL,
    renewals BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE pending_releases (
    tenant TEXT NOT NULL,
    digest TEXT NOT NULL,
    ref_name TEXT NOT NULL,
    since_ns BIGINT NOT NULL,
    PRIMARY KEY (tenant, digest, ref_name)
)
"""

# `uses_module` (is a module still run by some function?) without a scan of every function.
_V2_MODULE_INDEX = "CREATE INDEX functions_by_module ON functions (module_digest)"

# Token buckets shared by every gateway on the database (tensorwasm_gateway.access.shared):
# `level` requests at `stamp_seconds` of the database's clock. SQLite's gateways share one
# host and keep their buckets in memory, so the table is PostgreSQL's only.
_POSTGRES_V3 = """
CREATE TABLE rate_buckets (
    scope TEXT NOT NULL,
    bucket_key TEXT NOT NULL,
    level DOUBLE PRECISION NOT NULL,
    stamp_seconds DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (scope, bucket_key)
)
"""

# The kernel registry's manifests (tensorwasm_gateway.kernels.catalog); the PTX is in the
# snapshot store. `namespace` is '' for the shared catalogue, else the owning tenant.
_KERNELS = """
CREATE TABLE kernels (
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    sm_version {int} NOT NULL,
    digest TEXT NOT NULL,
    signature TEXT NOT NULL,
    key_id TEXT NOT NULL,
    entry TEXT NOT NULL,
    publisher TEXT NOT NULL,
    ptx_size_bytes {int} NOT NULL,
    publish_time_ns {int} NOT NULL,
    PRIMARY KEY (namespace, name, version)
){suffix}"""
_SQLITE_V4 = _KERNELS.format(int="INTEGER", suffix=" WITHOUT ROWID")
_POSTGRES_V4 = _KERNELS.format(int="BIGINT", suffix="")


def _sqlite_v1(session: Session) -> None:
    session.script(_SQLITE_V1)
    for table, column, definition in _SQLITE_LATE_COLUMNS:
        columns = {row[1] for row in session.execute(f"PRAGMA table_info({table})").rows}
        if column not in columns:
            session.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
    session.script(_SQLITE_V1_INDEX)


MIGRATIONS = (
    Migration(1, "initial", _sqlite_v1, _POSTGRES_V1),
    Migration(2, "functions_by_module", _V2_MODULE_INDEX, _V2_MODULE_INDEX),
    Migration(3, "rate_buckets", "", _POSTGRES_V3),
    Migration(4, "kernels", _SQLITE_V4, _POSTGRES_V4),
)
