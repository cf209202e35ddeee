"""Async invocations in the gateway's database: one row each, durable, kept until expiry;
and the leases of the gateways that own them.

Lease times are read on one clock: on PostgreSQL the database's (`now()` in the
transaction that reads or writes the lease, in place of the caller's `now_ns`), so that
gateways whose clocks disagree never fail each other's live work; on SQLite, whose gateways
share one host, the host's. On PostgreSQL a gateway's work is failed only when its lease
has expired and its liveness lock is free (tensorwasm_gateway.invocations.liveness), so
slow heartbeats alone never fail a live gateway's work either.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace

from tensorwasm_common.database import ConstraintViolation, Engine, Session

from tensorwasm_gateway.errors import InvocationNotFoundError
from tensorwasm_gateway.functions import Registry
from tensorwasm_gateway.invocations.liveness import LivenessLock, is_free

_DATABASE_NOW_NS = "SELECT CAST(EXTRACT(EPOCH FROM now()) * 1000000000 AS BIGINT)"


class InvocationState(enum.IntEnum):
    """An invocation's state; the values are the wire's `InvocationState` (and the
    stored ones)."""

    PENDING = 1  # accepted, not yet sent to an executor
    RUNNING = 2  # sent to an executor, no outcome yet
    SUCCEEDED = 3  # the guest returned
    FAILED = 4  # the guest failed (the outcome says how) or the call did (the error)


PENDING = InvocationState.PENDING
RUNNING = InvocationState.RUNNING
SUCCEEDED = InvocationState.SUCCEEDED
FAILED = InvocationState.FAILED


@dataclass(frozen=True)
class InvocationRecord:
    """One async invocation as stored."""

    tenant: str
    invocation_id: str
    function_id: str
    export_name: str
    state: InvocationState
    request_id: str | None
    create_time_ns: int
    outcome: bytes = b""  # the executor's outcome, serialized as the wire carries it
    error: bytes = b""  # the call's error, serialized by the service's ErrorEncoder
    end_time_ns: int | None = None
    expire_time_ns: int | None = None
    owner: str = ""  # the id of the gateway process that runs it

    @property
    def finished(self) -> bool:
        """True once SUCCEEDED or FAILED."""
        return self.state in (SUCCEEDED, FAILED)


class InvocationStore:
    """The `invocations` table; every write is committed durably before it returns."""

    def __init__(self, registry: Registry) -> None:
        self._database = registry.database
        self._liveness = (
            LivenessLock(self._database.url) if self._database.engine is Engine.POSTGRESQL else None
        )

    def insert(self, record: InvocationRecord) -> InvocationRecord:
        """Adds a PENDING invocation; with a request_id already used by the tenant,
        returns that invocation instead (even past its expiry it is gone, not reused)."""
        try:
            self._database.execute(
                "INSERT INTO invocations VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                _row(record),
            )
        except ConstraintViolation:
            if record.request_id is None:
                raise
            existing = self.by_request_id(record.tenant, record.request_id)
            if existing is None:  # deleted between the insert and the read: try once more
                return self.insert(record)
            return existing
        return record

    def by_request_id(self, tenant: str, request_id: str) -> InvocationRecord | None:
        """The tenant's invocation started with `request_id`, if any."""
        with self._database.transaction() as db:
            row = db.execute(
                "SELECT * FROM invocations WHERE tenant = ? AND request_id = ?",
                (tenant, request_id),
            ).one()
        return None if row is None else _record(row)

    def get(self, tenant: str, invocation_id: str, now_ns: int) -> InvocationRecord:
        """The invocation; InvocationNotFoundError when unknown or expired."""
        with self._database.transaction() as db:
            row = db.execute(
                "SELECT * FROM invocations WHERE tenant = ? AND invocation_id = ? "
                "AND (expire_time_ns IS NULL OR expire_time_ns > ?)",
                (tenant, invocation_id, now_ns),
            ).one()
        if row is None:
            raise InvocationNotFoundError(
                f"invocation {invocation_id!r} not found",
                metadata={"invocation_id": invocation_id},
            )
        return _record(row)

    def list_page(self, tenant: str, after: str, limit: int, now_ns: int) -> list[InvocationRecord]:
        """Up to `limit` unexpired invocations with ids greater than `after`, by id (ids
        are time-ordered, so this is oldest first)."""
        with self._database.transaction() as db:
            rows = db.execute(
                "SELECT * FROM invocations WHERE tenant = ? AND invocation_id > ? "
                "AND (expire_time_ns IS NULL OR expire_time_ns > ?) "
                "ORDER BY invocation_id LIMIT ?",
                (tenant, after, now_ns, limit),
            ).rows
        return [_record(row) for row in rows]

    def set_running(self, tenant: str, invocation_id: str) -> None:
        """PENDING -> RUNNING."""
        with self._database.transaction() as db:
            db.execute(
                "UPDATE invocations SET state = ? WHERE tenant = ? AND invocation_id = ? "
                "AND state = ?",
                (RUNNING, tenant, invocation_id, PENDING),
            )

    def finish(self, record: InvocationRecord) -> None:
        """Records the final state, outcome or error, end and expiry of an invocation
        that has not finished yet (a finished invocation never changes)."""
        with self._database.transaction() as db:
            db.execute(
                "UPDATE invocations SET state = ?, outcome = ?, error = ?, end_time_ns = ?, "
                "expire_time_ns = ? WHERE tenant = ? AND invocation_id = ? AND state IN (?, ?)",
                (
                    record.state,
                    record.outcome,
                    record.error,
                    record.end_time_ns,
                    record.expire_time_ns,
                    record.tenant,
                    record.invocation_id,
                    PENDING,
                    RUNNING,
                ),
            )

    def fail_owned(self, owner: str, error: bytes, end_time_ns: int, expire_time_ns: int) -> int:
        """Marks the PENDING or RUNNING invocations of gateway `owner` FAILED with
        `error` (at its clean stop); returns how many."""
        with self._database.transaction() as db:
            cursor = db.execute(
                "UPDATE invocations SET state = ?, error = ?, end_time_ns = ?, "
                "expire_time_ns = ? WHERE state IN (?, ?) AND owner = ?",
                (FAILED, error, end_time_ns, expire_time_ns, PENDING, RUNNING, owner),
            )
        return cursor.rowcount

    def expired_leases(self, now_ns: int) -> dict[str, int]:
        """The leases expired at `now_ns`: gateway id -> its renewal count as read."""
        with self._database.transaction() as db:
            rows = db.execute(
                "SELECT gateway_id, renewals FROM gateways WHERE lease_expire_ns <= ?",
                (self._now_ns(db, now_ns),),
            ).rows
        return {str(gateway_id): int(renewals) for gateway_id, renewals in rows}

    def fail_orphaned(
        self,
        alive: str,
        expired: Mapping[str, int],
        error: bytes,
        end_time_ns: int,
        expire_time_ns: int,
    ) -> int:
        """Marks FAILED with `error` the PENDING or RUNNING invocations of the gateways
        whose lease the caller read as `expired` (id -> renewal count), and of owners
        that hold no lease at all, except those of gateway `alive` (the caller); then
        forgets those leases. Returns how many invocations it failed.

        Compare-and-set, in one transaction: a gateway that renewed its lease since the
        caller read it (its renewal count moved) keeps its invocations and its lease,
        however late that renewal was.
        """
        with self._database.transaction() as db:
            if db.engine is Engine.POSTGRESQL:  # a held liveness lock: alive, however late
                expired = {g: n for g, n in expired.items() if is_free(db, g)}
            db.executemany(  # the CAS: only leases nobody renewed since the read
                "DELETE FROM gateways WHERE gateway_id = ? AND renewals = ?",
                list(expired.items()),
            )
            cursor = db.execute(
                "UPDATE invocations SET state = ?, error = ?, end_time_ns = ?, "
                "expire_time_ns = ? WHERE state IN (?, ?) AND owner != ? AND owner NOT IN "
                "(SELECT gateway_id FROM gateways)",
                (FAILED, error, end_time_ns, expire_time_ns, PENDING, RUNNING, alive),
            )
        return cursor.rowcount

    def renew_lease(self, gateway_id: str, now_ns: int, lease_ns: int) -> bool:
        """Records that gateway `gateway_id` is alive at `now_ns` (on the lease clock)
        and holds its lease until `now_ns + lease_ns`, counting the renewal; False when
        it had no unexpired lease before (its first heartbeat, or it lost the lease:
        others may have failed its invocations)."""
        if self._liveness is not None:
            self._liveness.hold(gateway_id)
        with self._database.transaction() as db:
            now_ns = self._now_ns(db, now_ns)
            row = db.execute(
                "SELECT lease_expire_ns FROM gateways WHERE gateway_id = ?", (gateway_id,)
            ).one()
            held = row is not None and int(row[0]) > now_ns
            db.execute(
                "INSERT INTO gateways (gateway_id, start_time_ns, last_seen_ns, "
                "lease_expire_ns, renewals) VALUES (?, ?, ?, ?, 1) "
                "ON CONFLICT (gateway_id) DO UPDATE SET "
                "last_seen_ns = excluded.last_seen_ns, "
                "lease_expire_ns = excluded.lease_expire_ns, renewals = gateways.renewals + 1",
                (gateway_id, now_ns, now_ns, now_ns + lease_ns),
            )
        return held

    def release_lease(self, gateway_id: str) -> None:
        """Forgets the lease of gateway `gateway_id` (its clean stop)."""
        with self._database.transaction() as db:
            db.execute("DELETE FROM gateways WHERE gateway_id = ?", (gateway_id,))
        if self._liveness is not None:
            self._liveness.release()

    def close(self) -> None:
        """Ends this store's own sessions (on PostgreSQL the liveness lock's); the lease
        row stays, as after a crash."""
        if self._liveness is not None:
            self._liveness.release()

    def leases(self) -> dict[str, int]:
        """Every recorded lease: gateway id -> lease expiry (ns)."""
        with self._database.transaction() as db:
            rows = db.execute("SELECT gateway_id, lease_expire_ns FROM gateways").rows
        return {str(gateway_id): int(expiry) for gateway_id, expiry in rows}

    def _now_ns(self, session: Session, given_ns: int) -> int:
        """The lease clock: the database's on PostgreSQL, else `given_ns` (the host's)."""
        if session.engine is Engine.POSTGRESQL:
            return int(session.execute(_DATABASE_NOW_NS).rows[0][0])
        return given_ns

    def purge_expired(self, now_ns: int) -> int:
        """Deletes the invocations past their expiry; returns how many."""
        with self._database.transaction() as db:
            cursor = db.execute(
                "DELETE FROM invocations WHERE expire_time_ns IS NOT NULL AND expire_time_ns <= ?",
                (now_ns,),
            )
        return cursor.rowcount


def finished(
    record: InvocationRecord,
    state: InvocationState,
    *,
    outcome: bytes = b"",
    error: bytes = b"",
    end_time_ns: int,
    retention_ns: int,
) -> InvocationRecord:
    """`record` in its final state."""
    return replace(
        record,
        state=state,
        outcome=outcome,
        error=error,
        end_time_ns=end_time_ns,
        expire_time_ns=end_time_ns + retention_ns,
    )


def _row(record: InvocationRecord) -> tuple[object, ...]:
    return (
        record.tenant,
        record.invocation_id,
        record.function_id,
        record.export_name,
        record.state,
        record.request_id,
        record.outcome,
        record.error,
        record.create_time_ns,
        record.end_time_ns,
        record.expire_time_ns,
        record.owner,
    )


def _record(row: tuple[object, ...]) -> InvocationRecord:
    (tenant, invocation_id, function_id, export, state, request_id, outcome, error,
     created, ended, expires, owner) = row  # fmt: skip
    return InvocationRecord(
        tenant=str(tenant),
        invocation_id=str(invocation_id),
        function_id=str(function_id),
        export_name=str(export),
        state=InvocationState(int(state)),  # type: ignore[call-overload]
        request_id=None if request_id is None else str(request_id),
        create_time_ns=int(created),  # type: ignore[call-overload]
        outcome=bytes(outcome),  # type: ignore[call-overload]
        error=bytes(error),  # type: ignore[call-overload]
        end_time_ns=None if ended is None else int(ended),  # type: ignore[call-overload]
        expire_time_ns=None if expires is None else int(expires),  # type: ignore[call-overload]
        owner=str(owner),
    )
