"""The durable function registry in SQLite (WAL, synchronous=FULL), scoped by tenant."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tensorwasm_common.errors import InstanceNotFoundError

from tensorwasm_gateway.calls import ExportRecord
from tensorwasm_gateway.errors import FunctionAlreadyExistsError, FunctionNotFoundError

_SCHEMA = """
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
"""
# Columns added after a table's first release: (table, column, definition).
_MIGRATIONS = (("functions", "config", "BLOB NOT NULL DEFAULT x''"),)


@dataclass(frozen=True)
class FunctionRecord:
    """One deployed function."""

    tenant: str
    function_id: str
    module_digest: str
    module_size_bytes: int
    exports: tuple[ExportRecord, ...]
    create_time_ns: int
    config: bytes = b""  # the configuration, as the FunctionConfigCodec keeps it


@dataclass(frozen=True)
class InstanceRecord:
    """A live instance as the gateway knows it: which executor holds it."""

    tenant: str
    instance_id: str
    function_id: str
    module_digest: str
    executor: str
    idle_ttl_ns: int
    create_time_ns: int


class Registry:
    """Function rows; every write is committed durably before it returns."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
            add_missing_columns(self._db, _MIGRATIONS)
        # Point reads on the hot path (Invoke's lookup) use their own connection, inline on
        # the event loop: in WAL mode a reader never waits for the writer, and a primary-key
        # read (~10 µs) costs far less than a hop to a worker thread and back.
        self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._reader.execute("PRAGMA busy_timeout=100")
        self._reader_lock = threading.Lock()

    def insert(self, record: FunctionRecord) -> None:
        """Adds a function; FunctionAlreadyExistsError if the tenant has one of that id."""
        exports = json.dumps(
            [{"name": e.name, "params": e.params, "results": e.results} for e in record.exports]
        )
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO functions VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.tenant,
                        record.function_id,
                        record.module_digest,
                        record.module_size_bytes,
                        exports,
                        record.create_time_ns,
                        record.config,
                    ),
                )
        except sqlite3.IntegrityError:
            raise FunctionAlreadyExistsError(
                f"function {record.function_id!r} already exists",
                metadata={"function_id": record.function_id},
            ) from None

    def get(self, tenant: str, function_id: str) -> FunctionRecord:
        """The function; FunctionNotFoundError when the tenant has none of that id."""
        return _function(self._db, self._lock, tenant, function_id)

    def lookup(self, tenant: str, function_id: str) -> FunctionRecord:
        """`get` on the read connection: cheap enough to call on the event loop."""
        return _function(self._reader, self._reader_lock, tenant, function_id)

    def exists(self, tenant: str, function_id: str) -> bool:
        """True when the tenant has a function of that id."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM functions WHERE tenant = ? AND function_id = ?",
                (tenant, function_id),
            ).fetchone()
        return row is not None

    def list_page(self, tenant: str, after: str, limit: int) -> list[FunctionRecord]:
        """Up to `limit` functions with ids greater than `after`, ordered by id."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM functions WHERE tenant = ? AND function_id > ? "
                "ORDER BY function_id LIMIT ?",
                (tenant, after, limit),
            ).fetchall()
        return [_record(row) for row in rows]

    def uses_module(self, module_digest: str) -> bool:
        """True when a function of any tenant runs the module."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM functions WHERE module_digest = ? LIMIT 1", (module_digest,)
            ).fetchone()
        return row is not None

    def delete(self, tenant: str, function_id: str) -> None:
        """Removes a function; FunctionNotFoundError when there is none."""
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM functions WHERE tenant = ? AND function_id = ?",
                (tenant, function_id),
            )
        if cursor.rowcount == 0:
            raise FunctionNotFoundError(
                f"function {function_id!r} not found", metadata={"function_id": function_id}
            )

    def insert_instance(self, record: InstanceRecord) -> None:
        """Records a live instance."""
        with self._lock:
            self._db.execute(
                "INSERT INTO instances VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.tenant,
                    record.instance_id,
                    record.function_id,
                    record.module_digest,
                    record.executor,
                    record.idle_ttl_ns,
                    record.create_time_ns,
                ),
            )

    def get_instance(self, tenant: str, instance_id: str) -> InstanceRecord:
        """The tenant's instance; InstanceNotFoundError when it has none of that id."""
        with self._lock:
            row = self._db.execute(
                "SELECT * FROM instances WHERE tenant = ? AND instance_id = ?",
                (tenant, instance_id),
            ).fetchone()
        if row is None:
            raise InstanceNotFoundError(
                f"instance {instance_id!r} not found", metadata={"instance_id": instance_id}
            )
        return InstanceRecord(*row)

    def list_instances(self, tenant: str, after: str, limit: int) -> list[InstanceRecord]:
        """Up to `limit` of the tenant's instances with ids greater than `after`, by id."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM instances WHERE tenant = ? AND instance_id > ? "
                "ORDER BY instance_id LIMIT ?",
                (tenant, after, limit),
            ).fetchall()
        return [InstanceRecord(*row) for row in rows]

    def delete_instance(self, tenant: str, instance_id: str) -> bool:
        """Forgets an instance; False when there was no such row."""
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM instances WHERE tenant = ? AND instance_id = ?",
                (tenant, instance_id),
            )
        return cursor.rowcount > 0

    @contextlib.contextmanager
    def locked(self) -> Iterator[sqlite3.Connection]:
        """The connection, held exclusively: for the tables other modules keep in the
        registry database (tensorwasm_gateway.invocations.store)."""
        with self._lock:
            yield self._db

    def check(self) -> None:
        """Health: the database answers a query."""
        with self._lock:
            self._db.execute("SELECT 1").fetchone()

    def close(self) -> None:
        """Closes the connection."""
        with self._lock:
            self._db.close()
        with self._reader_lock:
            self._reader.close()


def add_missing_columns(
    db: sqlite3.Connection, migrations: tuple[tuple[str, str, str], ...]
) -> None:
    """Adds each (table, column, definition) the table lacks: a database made by an
    older release gains the columns added since (at the end of the row)."""
    for table, column, definition in migrations:
        columns = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in columns:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")


def now_ns() -> int:
    """The creation timestamp for new rows."""
    return time.time_ns()


def _function(
    db: sqlite3.Connection, lock: threading.Lock, tenant: str, function_id: str
) -> FunctionRecord:
    """The tenant's function of that id, read on `db` under `lock`."""
    with lock:
        row = db.execute(
            "SELECT * FROM functions WHERE tenant = ? AND function_id = ?",
            (tenant, function_id),
        ).fetchone()
    if row is None:
        raise FunctionNotFoundError(
            f"function {function_id!r} not found", metadata={"function_id": function_id}
        )
    return _record(row)


def _record(row: tuple[str, str, str, int, str, int, bytes]) -> FunctionRecord:
    tenant, function_id, digest, size, exports_json, created, config = row
    exports = tuple(
        ExportRecord(e["name"], tuple(e["params"]), tuple(e["results"]))
        for e in json.loads(exports_json)
    )
    return FunctionRecord(tenant, function_id, digest, size, exports, created, bytes(config))
