"""`tensorwasm snapshot ls | get | rm | verify` against a real stack: deploying a module puts
its compiled artifact in the store (tenant `fleet-artifacts`), which the CLI then lists,
shows, verifies and removes; refusals exit 1 with the typed reason."""

from __future__ import annotations

import json
from pathlib import Path

import blake3
import pytest
import wasmtime

from tests.e2e.test_cli import Cli, stack_cli  # noqa: F401 - the stack fixture

pytestmark = pytest.mark.integration

ARTIFACT_TENANT = "fleet-artifacts"


def test_snapshot_ls_get_verify_rm(stack_cli: Cli, tmp_path: Path) -> None:  # noqa: F811
    # A module of this test's own, so its artifact is created here and nowhere else.
    wat = tmp_path / "answer.wat"
    wat.write_text('(module (func (export "answer") (result i32) i32.const 4242))')
    digest = blake3.blake3(bytes(wasmtime.wat2wasm(wat.read_text()))).hexdigest()
    deployer = Cli(stack_cli.data_dir, stack_cli.gateway, tenant="cli-snapshots")
    assert json.loads(deployer.ok("deploy", str(wat)))["module_digest"] == digest

    cli = Cli(stack_cli.data_dir, stack_cli.gateway, tenant=ARTIFACT_TENANT)
    listing = cli.ok("snapshot", "ls", "--source", digest).splitlines()
    assert len(listing) == 1, listing
    snapshot_id, kind, source_prefix = listing[0].split()[:3]
    assert (kind, source_prefix) == ("compiled_module", digest[:16])

    shown = json.loads(cli.ok("snapshot", "get", snapshot_id))
    assert (shown["id"], shown["source_digest"], shown["tenant"]) == (
        snapshot_id,
        digest,
        ARTIFACT_TENANT,
    )
    assert shown["format_version"] == 1 and shown["payload_size_bytes"] > 0

    payload = tmp_path / "artifact.cwasm"
    cli.ok("snapshot", "get", snapshot_id, "--output", str(payload))
    assert blake3.blake3(payload.read_bytes()).hexdigest() == shown["payload_digest"]

    verified = cli.ok("snapshot", "verify", snapshot_id, "--engine", shown["engine_fingerprint"])
    assert verified == (
        f"OK {snapshot_id}: {shown['payload_size_bytes']} bytes, blake3 {shown['payload_digest']}\n"
    )
    assert cli.fails("snapshot", "verify", snapshot_id, "--engine", "another-engine").startswith(
        "error: FAILED_PRECONDITION ENGINE_FINGERPRINT_MISMATCH"
    )
    # Another tenant does not see the record at all.
    assert deployer.ok("snapshot", "ls", "--source", digest) == ""
    assert deployer.fails("snapshot", "get", snapshot_id).startswith(
        "error: NOT_FOUND SNAPSHOT_NOT_FOUND"
    )

    assert cli.ok("snapshot", "rm", snapshot_id) == f"deleted {snapshot_id}\n"
    assert cli.ok("snapshot", "ls", "--source", digest) == ""
    assert cli.fails("snapshot", "verify", snapshot_id).startswith(
        "error: NOT_FOUND SNAPSHOT_NOT_FOUND"
    )
    assert cli.fails("snapshot", "get", "not-an-id").startswith(
        "error: INVALID_ARGUMENT INVALID_NAME"
    )
