"""The audit log's peer: x-forwarded-for counts only when a trusted proxy sends it."""

from __future__ import annotations

import json
import time
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
    deadline = time.monotonic() + 60  # bounds a missing record; the write is immediate
    while time.monotonic() < deadline:
        lines = audit.read_text().splitlines() if audit.exists() else []
        for record in map(json.loads, lines):
            if record["request_id"] == request_id:
                return str(record["peer"])
        time.sleep(0.05)
    raise AssertionError(f"no audit record of {request_id}")


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
