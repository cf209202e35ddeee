"""The durable function registry, scoped by tenant, on the gateway's database.

Every write commits before it returns. Invoke's lookup does no database round trip when it
can avoid one: on SQLite it reads the local file inline (cheaper than a hop to a worker
thread), and keeps what it read until the file's `PRAGMA data_version` says another
connection committed (a few µs, less than the row's read); on PostgreSQL it reads the
FunctionCache, which every gateway invalidates from the registry's NOTIFY on each delete.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tensorwasm_common.database import ConstraintViolation, Database, Engine, Listener
from tensorwasm_common.errors import InstanceNotFoundError

from tensorwasm_gateway.calls import ExportRecord
from tensorwasm_gateway.errors import FunctionAlreadyExistsError, FunctionNotFoundError
from tensorwasm_gateway.functions.cache import FunctionCache
from tensorwasm_gateway.state import open_database

# NOTIFY channel of function deletes (a redeploy deletes first; only found functions are
# cached, so a create changes nothing cached); the payload is ["tenant", "function_id"].
CHANGES_CHANNEL = "tensorwasm_gateway_functions"

_SELECT_FUNCTION = "SELECT * FROM functions WHERE tenant = ? AND function_id = ?"
_SELECT_INSTANCE = "SELECT * FROM instances WHERE tenant = ? AND instance_id = ?"


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
    """Function and instance rows on the gateway's database."""

    def __init__(self, target: Database | Path) -> None:
        """On `target`, an open (migrated) database or the path of an SQLite file."""
        self.database = target if isinstance(target, Database) else open_database(target)
        self._cache: FunctionCache[FunctionRecord] | None = None
        self._listener: Listener | None = None
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        # What `lookup` and `lookup_instance` read from the SQLite file, and the file's
        # data_version then.
        self._read: dict[tuple[str, str], FunctionRecord] = {}
        self._read_instances: dict[tuple[str, str], InstanceRecord] = {}
        self._read_version: int | None = None
        if self.database.engine is Engine.POSTGRESQL:
            self._cache = FunctionCache()
            self._listener = Listener(
                self.database.url, CHANGES_CHANNEL, self._changed, self._cache.clear
            )
            self._listener.start()
        else:  # a connection of its own: in WAL mode a reader never waits for the writer
            path = self.database.url.sqlite_path
            self._reader = sqlite3.connect(path, check_same_thread=False, isolation_level=None)  # type: ignore[arg-type]
            self._reader.execute("PRAGMA busy_timeout=100")

    def insert(self, record: FunctionRecord) -> None:
        """Adds a function; FunctionAlreadyExistsError if the tenant has one of that id."""
        exports = json.dumps(
            [{"name": e.name, "params": e.params, "results": e.results} for e in record.exports]
        )
        try:
            with self.database.transaction() as session:
                session.execute(
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
        except ConstraintViolation:
            raise FunctionAlreadyExistsError(
                f"function {record.function_id!r} already exists",
                metadata={"function_id": record.function_id},
            ) from None

    def get(self, tenant: str, function_id: str) -> FunctionRecord:
        """The function, read from the database; FunctionNotFoundError when the tenant
        has none of that id."""
        return _found(
            self.database.execute(_SELECT_FUNCTION, (tenant, function_id)).one(), function_id
        )

    def lookup(self, tenant: str, function_id: str) -> FunctionRecord | None:
        """The function without a round trip to a database server: cheap enough for the
        event loop. None when the caller must `load` it (PostgreSQL, not cached)."""
        if self._reader is not None:
            with self._reader_lock:
                return self._read_inline(self._reader, tenant, function_id)
        assert self._cache is not None and self._listener is not None
        if not self._listener.live:  # notifications may be missed: trust nothing cached
            return None
        return self._cache.get((tenant, function_id))

    def _read_inline(
        self, reader: sqlite3.Connection, tenant: str, function_id: str
    ) -> FunctionRecord:
        """The function from the local file, remembered while the file is unchanged.

        `PRAGMA data_version` (a few µs, half a row read) changes whenever another
        connection, of this process or another one, commits to the file: what was read
        before it changed is forgotten, so a record is never served after its row changed.
        A read that races a commit is read again on the next call. Misses are not kept.
        """
        self._check_version(reader)
        record = self._read.get((tenant, function_id))
        if record is None:
            row = reader.execute(_SELECT_FUNCTION, (tenant, function_id)).fetchone()
            record = _found(row, function_id)
            if len(self._read) >= _READ_ENTRIES:
                self._read.clear()
            self._read[(tenant, function_id)] = record
        return record

    def _check_version(self, reader: sqlite3.Connection) -> None:
        """Forgets everything read inline once another connection committed to the file."""
        version = reader.execute("PRAGMA data_version").fetchone()[0]
        if version != self._read_version:
            self._read.clear()
            self._read_instances.clear()
            self._read_version = version

    def load(self, tenant: str, function_id: str) -> FunctionRecord:
        """`get`, remembered for `lookup` (when no change raced the read)."""
        if self._cache is None:
            return self.get(tenant, function_id)
        generation = self._cache.generation
        record = self.get(tenant, function_id)
        if self._listener is not None and self._listener.live:
            self._cache.put((tenant, function_id), record, generation)
        return record

    def exists(self, tenant: str, function_id: str) -> bool:
        """True when the tenant has a function of that id."""
        row = self.database.execute(
            "SELECT 1 FROM functions WHERE tenant = ? AND function_id = ?",
            (tenant, function_id),
        ).one()
        return row is not None

    def list_page(self, tenant: str, after: str, limit: int) -> list[FunctionRecord]:
        """Up to `limit` functions with ids greater than `after`, ordered by id."""
        rows = self.database.execute(
            "SELECT * FROM functions WHERE tenant = ? AND function_id > ? "
            "ORDER BY function_id LIMIT ?",
            (tenant, after, limit),
        ).rows
        return [_record(row) for row in rows]

    def uses_module(self, module_digest: str) -> bool:
        """True when a function of any tenant runs the module."""
        row = self.database.execute(
            "SELECT 1 FROM functions WHERE module_digest = ? LIMIT 1", (module_digest,)
        ).one()
        return row is not None

    def tenant_uses_module(self, tenant: str, module_digest: str) -> bool:
        """True when a function of `tenant` runs the module."""
        row = self.database.execute(
            "SELECT 1 FROM functions WHERE tenant = ? AND module_digest = ? LIMIT 1",
            (tenant, module_digest),
        ).one()
        return row is not None

    def delete(self, tenant: str, function_id: str) -> None:
        """Removes a function; FunctionNotFoundError when there is none."""
        with self.database.transaction() as session:
            deleted = session.execute(
                "DELETE FROM functions WHERE tenant = ? AND function_id = ?",
                (tenant, function_id),
            ).rowcount
            session.notify(CHANGES_CHANNEL, _payload(tenant, function_id))
        if self._cache is not None:  # this gateway at once; the others on the NOTIFY
            self._cache.invalidate((tenant, function_id))
        if deleted == 0:
            raise FunctionNotFoundError(
                f"function {function_id!r} not found", metadata={"function_id": function_id}
            )

    def insert_instance(self, record: InstanceRecord) -> None:
        """Records a live instance."""
        self.database.execute(
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
        row = self.database.execute(_SELECT_INSTANCE, (tenant, instance_id)).one()
        return _found_instance(row, instance_id)

    def lookup_instance(self, tenant: str, instance_id: str) -> InstanceRecord | None:
        """`get_instance` without a round trip to a database server, cheap enough for the
        event loop: on SQLite, from the local file, remembered while the file is
        unchanged (as `lookup`); None on PostgreSQL (the caller must `get_instance`)."""
        if self._reader is None:
            return None
        with self._reader_lock:
            self._check_version(self._reader)
            key = (tenant, instance_id)
            record = self._read_instances.get(key)
            if record is None:
                row = self._reader.execute(_SELECT_INSTANCE, key).fetchone()
                record = _found_instance(row, instance_id)
                if len(self._read_instances) >= _READ_ENTRIES:
                    self._read_instances.clear()
                self._read_instances[key] = record
            return record

    def list_instances(self, tenant: str, after: str, limit: int) -> list[InstanceRecord]:
        """Up to `limit` of the tenant's instances with ids greater than `after`, by id."""
        rows = self.database.execute(
            "SELECT * FROM instances WHERE tenant = ? AND instance_id > ? "
            "ORDER BY instance_id LIMIT ?",
            (tenant, after, limit),
        ).rows
        return [_instance(row) for row in rows]

    def delete_instance(self, tenant: str, instance_id: str) -> bool:
        """Forgets an instance; False when there was no such row."""
        cursor = self.database.execute(
            "DELETE FROM instances WHERE tenant = ? AND instance_id = ?",
            (tenant, instance_id),
        )
        return cursor.rowcount > 0

    def check(self) -> None:
        """Health: the database answers a query."""
        self.database.check()

    def close(self) -> None:
        """Stops listening and closes the connections."""
        if self._listener is not None:
            self._listener.stop()
        if self._reader is not None:
            with self._reader_lock:
                self._reader.close()
        self.database.close()

    def _changed(self, payload: str) -> None:
        tenant, function_id = json.loads(payload)
        assert self._cache is not None
        self._cache.invalidate((str(tenant), str(function_id)))


def now_ns() -> int:
    """The creation timestamp for new rows."""
    return time.time_ns()


def _payload(tenant: str, function_id: str) -> str:
    return json.dumps([tenant, function_id])


def _found(row: tuple[Any, ...] | None, function_id: str) -> FunctionRecord:
    if row is None:
        raise FunctionNotFoundError(
            f"function {function_id!r} not found", metadata={"function_id": function_id}
        )
    return _record(row)


def _found_instance(row: tuple[Any, ...] | None, instance_id: str) -> InstanceRecord:
    if row is None:
        raise InstanceNotFoundError(
            f"instance {instance_id!r} not found", metadata={"instance_id": instance_id}
        )
    return _instance(row)


# The records `lookup` (and `lookup_instance`) keep (SQLite); past it, all are forgotten.
_READ_ENTRIES = 4096


def _record(row: tuple[Any, ...]) -> FunctionRecord:
    tenant, function_id, digest, size, exports_json, created, config = row
    exports = tuple(
        ExportRecord(e["name"], tuple(e["params"]), tuple(e["results"]))
        for e in json.loads(str(exports_json))
    )
    return FunctionRecord(
        str(tenant), str(function_id), str(digest), int(size), exports, int(created),
        bytes(config),
    )  # fmt: skip


def _instance(row: tuple[Any, ...]) -> InstanceRecord:
    tenant, instance_id, function_id, digest, executor, ttl, created = row
    return InstanceRecord(
        str(tenant), str(instance_id), str(function_id), str(digest), str(executor),
        int(ttl), int(created),
    )  # fmt: skip
