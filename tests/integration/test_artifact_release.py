"""Compiled artifacts of deleted functions are released: the fleet's store records of a module
go with its last function (of any tenant), and the executor's artifact directory stays under
`ARTIFACT_DIR_MAX_BYTES`. Real processes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

CAP_BYTES = 40_000  # room for two or so of these small artifacts, not five


def module(n: int) -> bytes:
    import wasmtime

    return bytes(
        wasmtime.wat2wasm(
            '(module (func (export "add") (param i32 i32) (result i32)'
            f" local.get 0 local.get 1 i32.add i32.const {n} i32.add))"
        )
    )


def artifact_records(stack: Any) -> list[str]:
    """The source digests of every `fleet-artifacts` record in the store."""
    with stack.internal_channel("snapshot") as channel:
        listed = pb_grpc.SnapshotStoreServiceStub(channel).ListSnapshots(
            pb.ListSnapshotsRequest(page_size=1000),
            timeout=30,
            metadata=(("x-tensorwasm-tenant", "fleet-artifacts"),),
        )
    return sorted(s.source_digest for s in listed.snapshots)


def local_artifacts(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "executor" / "artifacts").rglob("*.cwasm"))


def test_deploy_delete_cycles_leave_no_records_and_a_bounded_directory(
    launch_stack: Callable[..., Any], tmp_path: Path
) -> None:
    stack = launch_stack(tmp_path, {"TENSORWASM_EXECUTOR_ARTIFACT_DIR_MAX_BYTES": str(CAP_BYTES)})
    with stack.client("cycles") as client:
        for n in range(5):
            function = client.create_function(f"f{n}", module(n))
            response = client.invoke(f"f{n}", "add", [Value(i32=1), Value(i32=2)])
            assert list(response.outcome.success.results) == [Value(i32=3 + n)]
            assert artifact_records(stack) == [function.module_digest]
            client.delete_function(f"f{n}")
            assert artifact_records(stack) == []
    files = local_artifacts(tmp_path)
    assert 1 <= len(files) < 5
    assert sum(path.stat().st_size for path in files) <= CAP_BYTES


def test_a_module_keeps_its_artifact_while_any_function_uses_it(
    launch_stack: Callable[..., Any], tmp_path: Path
) -> None:
    stack = launch_stack(tmp_path)
    wasm = module(7)
    with stack.client("first") as first, stack.client("second") as second:
        digest = first.create_function("a", wasm).module_digest
        first.create_function("b", wasm)
        second.create_function("c", wasm)  # another tenant, the same module
        first.delete_function("a")
        first.delete_function("b")
        assert artifact_records(stack) == [digest]  # tenant `second` still runs it
        response = second.invoke("c", "add", [Value(i32=1), Value(i32=2)])
        assert list(response.outcome.success.results) == [Value(i32=10)]
        second.delete_function("c")
        assert artifact_records(stack) == []
