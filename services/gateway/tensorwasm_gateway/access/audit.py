"""The audit log: one JSON line per mutating or invoking call, allowed or denied.

Sinks (`TENSORWASM_GATEWAY_AUDIT_LOG`): `stdout`, `none`, or `file:/path`. The file is
opened with O_APPEND and every record is one `write(2)` of a whole line, so records are
never interleaved or buffered in the process, and `logrotate copytruncate` is safe (after
the truncation the next write lands at the new end of the file). A failed write is logged
and counted in `tensorwasm_gateway_audit_write_failures_total`; it never fails the call.

Record fields: ts (RFC 3339, UTC, ms), ts_unix_ms, request_id, actor {kind, token_id,
scope {kind, tenants}}, action, resource, tenant, outcome {code, reason}, latency_ms,
peer, trace_id.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from tensorwasm_gateway.access.tokens import Principal
from tensorwasm_gateway.metrics import AUDIT_WRITE_FAILURES

_log = logging.getLogger(__name__)


class AuditSink(Protocol):
    """Where audit lines go."""

    def write(self, line: bytes) -> None:
        """Writes one complete line (raises OSError on failure)."""

    def close(self) -> None:
        """Releases the sink."""


class FdSink:
    """Writes each line with one write(2) on a file descriptor (stdout or an O_APPEND file)."""

    def __init__(self, fd: int, *, owned: bool) -> None:
        self._fd = fd
        self._owned = owned

    @classmethod
    def append_to(cls, path: Path) -> FdSink:
        """Opens (creating, mode 0600) `path` for appending."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return cls(fd, owned=True)

    def write(self, line: bytes) -> None:
        """One write; a short write is finished so that the line stays whole."""
        written = os.write(self._fd, line)
        if written < len(line):  # rare (a full disk, a signal): finish the line
            view = memoryview(line)[written:]
            while view:
                written = os.write(self._fd, view)
                view = view[written:]

    def close(self) -> None:
        """Closes the file (never stdout)."""
        if self._owned:
            os.close(self._fd)
            self._owned = False


def open_sink(spec: str) -> AuditSink | None:
    """The sink named by the setting; None for `none`. ValueError when malformed."""
    if spec in ("", "stdout"):
        return FdSink(1, owned=False)
    if spec == "none":
        return None
    if spec.startswith("file:") and len(spec) > len("file:"):
        return FdSink.append_to(Path(spec[len("file:") :]))
    raise ValueError(f"audit_log: expected stdout, none or file:/path, got {spec!r}")


class AuditEvent(NamedTuple):
    """What happened in one call (a named tuple: one is built for every audited call, at
    a fraction of a frozen dataclass's cost)."""

    request_id: str
    principal: Principal | None
    action: str
    resource: str
    tenant: str
    code: str
    reason: str
    latency_seconds: float
    peer: str
    trace_id: str


def render(event: AuditEvent, now_ns: int) -> bytes:
    """The JSON line of an event: what `json.dumps(record, separators=(",", ":"))` writes
    for the record of the module docstring, built from parts (the actor's JSON once per
    principal, the timestamp's once per second), as it is written on every call."""
    millis = now_ns // 1_000_000
    actor = "null" if event.principal is None else _actor_json(event.principal)
    latency_ms = round(event.latency_seconds * 1000, 3)  # finite: repr is what json writes
    line = (
        f'{{"ts":"{_utc_second(millis // 1000)}.{millis % 1000:03d}Z","ts_unix_ms":{millis}'
        f',"request_id":{_string(event.request_id)},"actor":{actor}'
        f',"action":{_string(event.action)},"resource":{_string(event.resource)}'
        f',"tenant":{_string(event.tenant)},"outcome":{{"code":{_string(event.code)}'
        f',"reason":{_string(event.reason)}}},"latency_ms":{latency_ms!r}'
        f',"peer":{_string(event.peer)},"trace_id":{_string(event.trace_id)}}}\n'
    )
    return line.encode()


# How json.dumps (ensure_ascii) writes a string.
_string = json.encoder.encode_basestring_ascii


@functools.lru_cache(maxsize=4)
def _utc_second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


@functools.lru_cache(maxsize=256)
def _actor_json(principal: Principal) -> str:
    scope = principal.scope
    scope_json: dict[str, Any] = {"kind": scope.kind}
    if scope.tenants is not None:
        scope_json["tenants"] = sorted(scope.tenants)
    actor = {"kind": principal.kind, "token_id": principal.token_id, "scope": scope_json}
    return json.dumps(actor, separators=(",", ":"))


class AuditLog:
    """Renders events and writes them to the sink; failures are counted, never raised."""

    def __init__(self, sink: AuditSink | None) -> None:
        self._sink = sink

    @property
    def enabled(self) -> bool:
        """False for the `none` sink."""
        return self._sink is not None

    def record(self, event: AuditEvent) -> None:
        """Writes the event's line now (a few microseconds; no await)."""
        if self._sink is None:
            return
        try:
            self._sink.write(render(event, time.time_ns()))
        except Exception:
            AUDIT_WRITE_FAILURES.inc()
            _log.warning("audit record not written", exc_info=True)

    def close(self) -> None:
        """Closes the sink."""
        if self._sink is not None:
            self._sink.close()
