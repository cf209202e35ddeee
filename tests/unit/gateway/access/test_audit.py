"""Audit records: fields, the O_APPEND file sink under copytruncate, failures counted."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from tensorwasm_gateway.access.audit import AuditEvent, AuditLog, FdSink, open_sink, render
from tensorwasm_gateway.access.guard import peer_of, resource_of
from tensorwasm_gateway.access.proxies import NO_PROXIES, TrustedProxies
from tensorwasm_gateway.access.tokens import Principal, Scope


def _event(**overrides: object) -> AuditEvent:
    fields: dict[str, object] = {
        "request_id": "r1",
        "principal": Principal("tok_0123456789abcdef", Scope(tenants=frozenset({"b", "a"}))),
        "action": "invoke",
        "resource": "functions/f",
        "tenant": "a",
        "code": "OK",
        "reason": "",
        "latency_seconds": 0.0015,
        "peer": "127.0.0.1:5000",
        "trace_id": "ab" * 16,
    }
    fields.update(overrides)
    return AuditEvent(**fields)  # type: ignore[arg-type]


def test_render_has_every_field() -> None:
    line = render(_event(), 1_700_000_000_123_000_000)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    record = json.loads(line)
    assert record == {
        "ts": "2023-11-14T22:13:20.123Z",
        "ts_unix_ms": 1_700_000_000_123,
        "request_id": "r1",
        "actor": {
            "kind": "bearer",
            "token_id": "tok_0123456789abcdef",
            "scope": {"kind": "tenant_set", "tenants": ["a", "b"]},
        },
        "action": "invoke",
        "resource": "functions/f",
        "tenant": "a",
        "outcome": {"code": "OK", "reason": ""},
        "latency_ms": 1.5,
        "peer": "127.0.0.1:5000",
        "trace_id": "ab" * 16,
    }


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"principal": None, "code": "UNAUTHENTICATED", "reason": "TOKEN_INVALID"},
        {"principal": Principal("dev", Scope(admin=True), kind="dev")},
        {"principal": Principal("t", Scope())},
        {"resource": 'functions/"quoted"\\back\nline \u00e9\u4e2d\U0001f600'},
        {"peer": "[::1]:80", "trace_id": "", "latency_seconds": 12.3456789},
        {"latency_seconds": 0.0},
        {"latency_seconds": 1e-9},
        {"latency_seconds": 123456.0},
    ],
)
def test_render_writes_what_json_dumps_writes(overrides: dict[str, object]) -> None:
    """The line is built from parts: byte for byte the record through json.dumps."""
    event = _event(**overrides)
    for now_ns in (0, 1_700_000_000_123_000_000, 1_700_000_000_999_999_999):
        millis = now_ns // 1_000_000
        principal = event.principal
        actor = None
        if principal is not None:
            scope: dict[str, object] = {"kind": principal.scope.kind}
            if principal.scope.tenants is not None:
                scope["tenants"] = sorted(principal.scope.tenants)
            actor = {"kind": principal.kind, "token_id": principal.token_id, "scope": scope}
        record = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000))
            + f".{millis % 1000:03d}Z",
            "ts_unix_ms": millis,
            "request_id": event.request_id,
            "actor": actor,
            "action": event.action,
            "resource": event.resource,
            "tenant": event.tenant,
            "outcome": {"code": event.code, "reason": event.reason},
            "latency_ms": round(event.latency_seconds * 1000, 3),
            "peer": event.peer,
            "trace_id": event.trace_id,
        }
        expected = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        assert render(event, now_ns) == expected


def test_denied_without_actor() -> None:
    record = json.loads(render(_event(principal=None, code="UNAUTHENTICATED"), 0))
    assert record["actor"] is None
    assert record["outcome"]["code"] == "UNAUTHENTICATED"


def test_file_sink_appends_and_survives_copytruncate(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    log = AuditLog(open_sink(f"file:{path}"))
    log.record(_event(request_id="first"))
    log.record(_event(request_id="second"))
    assert [json.loads(x)["request_id"] for x in path.read_text().splitlines()] == [
        "first",
        "second",
    ]
    assert (path.stat().st_mode & 0o777) == 0o600
    # logrotate copytruncate: copy, then truncate in place while the gateway keeps its fd.
    rotated = tmp_path / "audit.jsonl.1"
    rotated.write_bytes(path.read_bytes())
    os.truncate(path, 0)
    log.record(_event(request_id="third"))
    content = path.read_bytes()
    assert not content.startswith(b"\0"), "writes must land at the new end (O_APPEND)"
    assert [json.loads(x)["request_id"] for x in content.decode().splitlines()] == ["third"]
    log.close()


def test_write_failure_is_counted_never_raised(tmp_path: Path) -> None:
    read_fd = os.open(tmp_path / "x", os.O_RDONLY | os.O_CREAT, 0o600)
    log = AuditLog(FdSink(read_fd, owned=True))  # writing a read-only fd fails (EBADF)
    before = REGISTRY.get_sample_value("tensorwasm_gateway_audit_write_failures_total") or 0.0
    log.record(_event())
    after = REGISTRY.get_sample_value("tensorwasm_gateway_audit_write_failures_total")
    assert after == before + 1
    log.close()


def test_sink_specs(tmp_path: Path) -> None:
    assert open_sink("none") is None
    assert isinstance(open_sink("stdout"), FdSink)
    with pytest.raises(ValueError, match="audit_log"):
        open_sink("syslog")


class _Context:
    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


LOOPBACK = TrustedProxies(["127.0.0.0/8", "::1"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("ipv4:10.0.0.5:4000", None, LOOPBACK, "10.0.0.5:4000"),
        ("ipv4:10.0.0.5:4000", "1.2.3.4", LOOPBACK, "10.0.0.5:4000"),  # untrusted: XFF ignored
        ("ipv4:127.0.0.1:4000", "6.6.6.6, 1.2.3.4", LOOPBACK, "1.2.3.4"),  # the proxy's own hop
        ("ipv6:[::1]:4000", "2001:db8::1", LOOPBACK, "2001:db8::1"),
        ("ipv4:127.0.0.1:4000", None, LOOPBACK, "127.0.0.1:4000"),
        ("unix:/tmp/sock", None, LOOPBACK, "unix:/tmp/sock"),
        # No proxy configured (the default): nobody names another client, loopback neither.
        ("ipv4:127.0.0.1:4000", "6.6.6.6", NO_PROXIES, "127.0.0.1:4000"),
        ("ipv6:[::1]:4000", "2001:db8::1", NO_PROXIES, "[::1]:4000"),
        ("ipv4:10.0.0.5:4000", "6.6.6.6", TrustedProxies(["10.0.0.0/24"]), "6.6.6.6"),
        ("ipv4:10.0.1.5:4000", "6.6.6.6", TrustedProxies(["10.0.0.0/24"]), "10.0.1.5:4000"),
    ],
)
def test_peer(peer: str, forwarded: str | None, trusted: TrustedProxies, expected: str) -> None:
    metadata = [("x-forwarded-for", forwarded)] if forwarded else []
    assert peer_of(_Context(peer), metadata, trusted) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", ["nope", "10.0.0.0/33", "1.2.3.4.5"])
def test_a_malformed_proxy_address_is_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        TrustedProxies([spec])


def test_resource_of_requests() -> None:
    from tensorwasm.gateway.v1 import gateway_service_pb2 as pb

    assert resource_of(pb.CreateFunctionRequest(function_id="f")) == "functions/f"
    assert resource_of(pb.InvokeRequest(name="functions/g")) == "functions/g"
    invocation = pb.InvokeRequest(name="functions/h")
    assert resource_of(pb.InvokeStreamRequest(invocation=invocation)) == "functions/h"
    assert resource_of(pb.CreateInstanceRequest(function="functions/i")) == "functions/i"
