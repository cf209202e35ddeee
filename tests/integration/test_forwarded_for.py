"""The audit log's peer: x-forwarded-for counts only when a trusted proxy sends it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration


def audited_peer(running: Any, audit: Path, request_id: str) -> str:
    """Makes an audited call claiming to come from 6.6.6.6; the peer its record names."""
    metadata = (
        ("x-tensorwasm-tenant", "t-audit"),
        ("x-request-id", request_id),
        ("x-forwarded-for", "6.6.6.6"),
    )
    with grpc.insecure_channel(running.gateway) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        with pytest.raises(grpc.RpcError):  # no such function: refused, and audited
            stub.DeleteFunction(
                pb.DeleteFunctionRequest(name="functions/none"), metadata=metadata, timeout=60
            )
    return _record_peer(audit, request_id)


@pytest.mark.parametrize(
    ("trusted", "expected"),
    [("", "127.0.0.1:"), ("10.9.9.9", "127.0.0.1:"), ("127.0.0.1", "6.6.6.6")],
    ids=["no-proxy", "another-proxy", "loopback-trusted"],
)
def test_a_forwarded_address_is_believed_only_from_a_trusted_proxy(
    launch_stack: Callable[..., Any], tmp_path: Path, trusted: str, expected: str
) -> None:
    audit = tmp_path / "audit.jsonl"
    running = launch_stack(
        tmp_path / "stack",
        {
            "TENSORWASM_GATEWAY_AUDIT_LOG": f"file:{audit}",
            "TENSORWASM_GATEWAY_TRUSTED_PROXIES": trusted,
        },
    )
    peer = audited_peer(running, audit, "xff-check")
    assert peer.startswith(expected)


def test_the_gateways_own_http_face_names_its_client_and_a_forged_proof_does_not(
    launch_stack: Callable[..., Any], tmp_path: Path
) -> None:
    # No TRUSTED_PROXIES: the face still proves its calls with this process's secret, so
    # the peer is the HTTP client as the face saw it (a host, no port), not the face's own
    # loopback connection (host:port). A caller who forges the proof header is not trusted.
    audit = tmp_path / "audit.jsonl"
    running = launch_stack(tmp_path / "stack", {"TENSORWASM_GATEWAY_AUDIT_LOG": f"file:{audit}"})
    http = running.services["gateway"].http_address
    request = urllib.request.Request(
        f"http://{http}/functions/none",
        method="DELETE",
        headers={
            "x-tensorwasm-tenant": "t-audit",
            "x-request-id": "via-face",
            "x-forwarded-for": "6.6.6.6",
        },
    )
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(request, timeout=60)
    assert _record_peer(audit, "via-face") == "127.0.0.1"  # the face's view of its client
    forged = (
        ("x-tensorwasm-tenant", "t-audit"),
        ("x-request-id", "forged"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-tensorwasm-face-proof", "guessed"),
    )
    with grpc.insecure_channel(running.gateway) as channel, pytest.raises(grpc.RpcError):
        pb_grpc.GatewayServiceStub(channel).DeleteFunction(
            pb.DeleteFunctionRequest(name="functions/none"), metadata=forged, timeout=60
        )
    assert _record_peer(audit, "forged").startswith("127.0.0.1:")


def _record_peer(audit: Path, request_id: str) -> str:
    deadline = time.monotonic() + 60  # bounds a missing record; the write is immediate
    while time.monotonic() < deadline:
        lines = audit.read_text().splitlines() if audit.exists() else []
        for record in map(json.loads, lines):
            if record["request_id"] == request_id:
                return str(record["peer"])
        time.sleep(0.05)
    raise AssertionError(f"no audit record of {request_id}")
