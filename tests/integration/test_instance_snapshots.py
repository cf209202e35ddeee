"""Live-instance snapshots through the whole stack, two executor replicas and a signing store:
save and restore through gRPC and the CLI (a restore on the other replica included), the
bad inputs (each its typed reason, nothing stored or restored), and the checkpoint
failover after a kill -9 of the executor holding a checkpointed instance."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import wasmtime
from tensorwasm.common.v1 import values_pb2
from tensorwasm.common.v1.service_token import SERVICE_TOKEN_METADATA_KEY
from tensorwasm.gateway.v1 import gateway_service_pb2 as gw
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as store_pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as store_grpc
from tensorwasm_client.client import GatewayClient, TensorWasmError
from tensorwasm_client.stack import LocalStack, ServiceProcess, stack_service_token

from tests.e2e.test_cli import Cli

pytestmark = pytest.mark.integration
EXECUTORS = ("executor", "executor-2")
KEY = b"k" * 32
# State the instance keeps both in an exported memory and in a global it does not export.
HIDDEN_COUNTER = """
(module
  (memory (export "memory") 1)
  (global $count (mut i32) (i32.const 0))
  (func (export "inc") (result i32)
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (i32.store (i32.const 16) (i32.add (i32.load (i32.const 16)) (i32.const 10)))
    (global.get $count))
  (func (export "stored") (result i32) (i32.load (i32.const 16))))
"""
# A device buffer (tensorwasm:gpu) holds state only the device has: `put` writes 16 bytes
# into a new buffer and then wipes its source in linear memory; `get` reads byte 15 back.
GPU_BUFFER = """
(module
  (import "tensorwasm:gpu/host@0.1.0" "tw_gpu_buffer_alloc" (func $alloc (param i64) (result i32)))
  (import "tensorwasm:gpu/host@0.1.0" "tw_gpu_buffer_write"
    (func $write (param i32 i64 i32 i32) (result i32)))
  (import "tensorwasm:gpu/host@0.1.0" "tw_gpu_buffer_read"
    (func $read (param i32 i64 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (global $handle (mut i32) (i32.const 0))
  (func (export "put") (param $n i32) (result i32)
    (local $i i32)
    (global.set $handle (call $alloc (i64.const 16)))
    (loop $l
      (i32.store8 (i32.add (i32.const 64) (local.get $i)) (i32.add (local.get $n) (local.get $i)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const 16))))
    (drop (call $write (global.get $handle) (i64.const 0) (i32.const 64) (i32.const 16)))
    (i64.store (i32.const 64) (i64.const 0))
    (i64.store (i32.const 72) (i64.const 0))
    (global.get $handle))
  (func (export "get") (result i32)
    (local $code i32)
    (local.set $code (call $read (global.get $handle) (i64.const 0) (i32.const 128) (i32.const 16)))
    (if (result i32) (i32.ne (local.get $code) (i32.const 0))
      (then (local.get $code))
      (else (i32.load8_u (i32.const 143))))))
"""
OTHER_MODULE = '(module (func (export "inc") (result i32) i32.const 7))'


@dataclass
class Fleet:
    """The stack and what the tests need of it."""

    launcher: LocalStack
    services: dict[str, ServiceProcess]
    data_dir: Path

    @property
    def gateway(self) -> str:
        return self.services["gateway"].grpc_address

    def client(self, tenant: str) -> GatewayClient:
        return GatewayClient(self.gateway, tenant=tenant)

    def cli(self, tenant: str) -> Cli:
        return Cli(self.data_dir, self.gateway, tenant=tenant)

    def store(self) -> tuple[store_grpc.SnapshotStoreServiceStub, grpc.Channel]:
        channel = grpc.insecure_channel(self.services["snapshot"].grpc_address)
        return store_grpc.SnapshotStoreServiceStub(channel), channel

    def records(self, tenant: str) -> list[store_pb.Snapshot]:
        """The tenant's INSTANCE_STATE records in the store."""
        stub, channel = self.store()
        token = stack_service_token(self.data_dir)
        metadata = [("x-tensorwasm-tenant", tenant)]
        if token:
            metadata.append((SERVICE_TOKEN_METADATA_KEY, token))
        with channel:
            reply = stub.ListSnapshots(
                store_pb.ListSnapshotsRequest(kind=store_pb.SNAPSHOT_KIND_INSTANCE_STATE),
                metadata=tuple(metadata),
            )
        return list(reply.snapshots)

    def handled(self, method: str) -> dict[str, float]:
        """How many `method` calls each executor handled."""
        return {name: _served(self.services[name], method) for name in EXECUTORS}


def _served(service: ServiceProcess, method: str) -> float:
    with urllib.request.urlopen(f"http://{service.metrics_address}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("tensorwasm_grpc_server_requests_total{") and (
            f'method="/tensorwasm.executor.v1.ExecutorService/{method}"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _start_fleet(data_dir: Path) -> Fleet:
    data_dir.mkdir(parents=True, exist_ok=True)
    key_file = data_dir / "signing.key"
    key_file.write_bytes(KEY)
    launcher = LocalStack(
        data_dir,
        ephemeral_ports=True,
        executor_replicas=2,
        extra_env={
            "TENSORWASM_SNAPSHOT_SIGNING_KEY_FILE": str(key_file),
            "TENSORWASM_EXECUTOR_INSTANCE_SWEEP_SECONDS": "0.1",
            "TENSORWASM_GATEWAY_EXECUTOR_HEALTH_INTERVAL_SECONDS": "0.5",
        },
    )
    try:
        return Fleet(launcher, launcher.start(), data_dir)
    except BaseException:
        launcher.stop()
        raise


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One fleet for the tests that kill nothing."""
    running = _start_fleet(tmp_path_factory.mktemp("instance-snapshots"))
    try:
        yield running
    finally:
        running.launcher.stop()


@pytest.fixture
def own_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A fleet of the test's own, for a test that kills an executor."""
    running = _start_fleet(tmp_path / "fleet")
    try:
        yield running
    finally:
        running.launcher.stop()


def _wasm(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def _inc(client: GatewayClient, instance: str, export: str = "inc") -> int:
    return int(client.call_instance(instance, export).outcome.success.results[0].i32)


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _reason(call: Callable[[], object]) -> str:
    with pytest.raises(TensorWasmError) as caught:
        call()
    return caught.value.reason


def test_snapshot_restores_memory_and_hidden_globals_through_grpc(fleet: Fleet) -> None:
    with fleet.client("snap-grpc") as client:
        client.create_function("counter", _wasm(HIDDEN_COUNTER))
        instance = client.create_instance("counter").instance.name
        assert [_inc(client, instance) for _ in range(3)] == [1, 2, 3]
        snapshot = client.snapshot_instance(instance)
        assert snapshot.name.startswith("snapshots/snap_") and snapshot.signed
        assert (snapshot.function, snapshot.instance) == ("functions/counter", instance)
        assert snapshot.state_size_bytes >= 65536
        assert _inc(client, instance) == 4  # the original goes on from where it was

        restored = client.restore_instance(snapshot.name)
        copy = restored.instance.name
        assert copy != instance and restored.instance.function == "functions/counter"
        assert restored.snapshot.name == snapshot.name
        # The copy starts from the snapshot: the global (not exported) and the memory.
        assert _inc(client, copy) == 4
        assert _inc(client, copy, "stored") == 40
        assert _inc(client, instance) == 5  # the two live apart
        # Restoring by a function the snapshot is not of is refused, restores nothing.
        before = len(client.list_instances())
        assert (
            _reason(lambda: client.restore_instance(snapshot.name, function_id="other"))
            == "SNAPSHOT_FUNCTION_MISMATCH"
        )
        assert len(client.list_instances()) == before


def test_device_buffers_are_copied_back_and_restored(fleet: Fleet) -> None:
    with fleet.client("snap-gpu") as client:
        client.create_function("buffers", _wasm(GPU_BUFFER))
        instance = client.create_instance("buffers").instance.name
        put = client.call_instance(instance, "put", [values_pb2.Value(i32=100)])
        assert put.outcome.success.results[0].i32 == 1  # handle 1
        assert _inc(client, instance, "get") == 115
        snapshot = client.snapshot_instance(instance)
        client.delete_instance(instance)  # its device buffer is freed with it
        restored = client.restore_instance(snapshot.name).instance.name
        assert _inc(client, restored, "get") == 115  # the bytes came back to a new buffer
        put = client.call_instance(restored, "put", [values_pb2.Value(i32=7)])
        assert put.outcome.success.results[0].i32 == 2  # handles go on, none reused
        assert _inc(client, restored, "get") == 22


def test_loaded_kernels_and_buffers_come_back_under_their_ids(
    fleet: Fleet, cuda_guest: Callable[[str], bytes]
) -> None:
    with fleet.client("snap-gpu-kernel") as client:
        client.create_function("resident", cuda_guest("gpu_resident"))
        instance = client.create_instance("resident").instance.name
        assert _inc(client, instance, "setup") == 0
        assert _inc(client, instance, "run") == 19
        snapshot = client.snapshot_instance(instance)
        client.delete_instance(instance)
        restored = client.restore_instance(snapshot.name).instance.name
        # The kernel id and the handles the guest kept in its globals work again: a and b
        # are only on the device (setup wiped them from linear memory).
        assert _inc(client, restored, "run") == 19


def test_cli_save_to_a_file_and_restore_on_the_other_replica(
    own_fleet: Fleet, tmp_path: Path
) -> None:
    fleet = own_fleet
    cli = fleet.cli("snap-cli")
    wat = tmp_path / "counter.wat"
    wat.write_text(HIDDEN_COUNTER)
    cli.ok("deploy", str(wat))
    before = fleet.handled("CreateInstance")
    instance = json.loads(cli.ok("instance", "create", "counter").splitlines()[0])["name"]
    created_on = next(n for n, c in fleet.handled("CreateInstance").items() if c > before[n])
    (other,) = (n for n in EXECUTORS if n != created_on)
    for _ in range(2):
        cli.ok("instance", "call", instance, "--export", "inc")
    saved_file = tmp_path / "counter.snap"
    saved = json.loads(cli.ok("snapshot", "save", "--instance", instance, "-o", str(saved_file)))
    assert saved["signed"] and saved["instance"] == instance
    assert saved["name"].startswith("snapshots/snap_")
    assert saved_file.stat().st_size == saved["record_size_bytes"]

    # The replica holding the instance dies (kill -9); the file restores on the other one.
    fleet.launcher.kill(created_on)
    restores = _served(fleet.services[other], "RestoreInstance")
    restored = json.loads(cli.ok("snapshot", "restore", str(saved_file)))
    assert restored["name"].startswith("instances/") and restored["name"] != instance
    assert _served(fleet.services[other], "RestoreInstance") == restores + 1
    assert cli.ok("instance", "call", restored["name"], "--export", "inc") == "[3]\n"
    assert cli.ok("instance", "call", restored["name"], "--export", "stored") == "[30]\n"
    # By name too: the store kept the saved snapshot (and it is signed).
    again = json.loads(cli.ok("snapshot", "restore", saved["name"], "--require-signature"))
    assert cli.ok("instance", "call", again["name"], "--export", "inc") == "[3]\n"


def test_bad_snapshot_files_each_get_their_reason_and_store_nothing(
    fleet: Fleet, tmp_path: Path
) -> None:
    tenant = "snap-bad"
    with fleet.client(tenant) as client:
        client.create_function("counter", _wasm(HIDDEN_COUNTER))
        instance = client.create_instance("counter").instance.name
        _inc(client, instance)
        snapshot = client.snapshot_instance(instance)
        _, chunks = client.export_snapshot(snapshot.name)
        record = b"".join(chunks)
        stored = len(fleet.records(tenant))

        def refused(data: bytes, **guards: object) -> str:
            return _reason(lambda: client.import_snapshot(data, **guards))  # type: ignore[arg-type]

        assert refused(record[: len(record) - 100]) == "SNAPSHOT_TRUNCATED"
        assert refused(record, max_restore_bytes=len(record) - 1) == "SNAPSHOT_TOO_LARGE"
        tampered = bytearray(record)
        tampered[len(record) // 2] ^= 0xFF
        assert refused(bytes(tampered)) == "SNAPSHOT_SIGNATURE_INVALID"
        assert refused(b"not a snapshot at all") == "SNAPSHOT_CORRUPT"
        assert len(fleet.records(tenant)) == stored  # nothing of these was stored

        # Too large to restore, as a record of the store: refused by the executor.
        assert (
            _reason(lambda: client.restore_instance(snapshot.name, max_restore_bytes=1024))
            == "SNAPSHOT_TOO_LARGE"
        )
        # Too large to take.
        assert (
            _reason(lambda: client.snapshot_instance(instance, max_restore_bytes=1024))
            == "SNAPSHOT_TOO_LARGE"
        )
        assert len(fleet.records(tenant)) == stored

        # The function now runs another module: the snapshot is of another function.
        client.delete_function("counter")
        client.create_function("counter", _wasm(OTHER_MODULE))
        assert refused(record) == "SNAPSHOT_FUNCTION_MISMATCH"
        assert (
            _reason(lambda: client.restore_instance(snapshot.name)) == "SNAPSHOT_FUNCTION_MISMATCH"
        )
        assert len(fleet.records(tenant)) == stored
        instances = len(client.list_instances())

    # Another tenant's file: not its function.
    with fleet.client("snap-bad-other") as other:
        assert _reason(lambda: other.import_snapshot(record)) == "SNAPSHOT_FUNCTION_MISMATCH"
        assert fleet.records("snap-bad-other") == []
    with fleet.client(tenant) as client:
        assert len(client.list_instances()) == instances

    # The CLI refuses an oversized file before sending it, and relays typed refusals.
    cli = fleet.cli(tenant)
    big = tmp_path / "big.snap"
    big.write_bytes(record)
    result = cli("snapshot", "restore", str(big), "--max-restore-bytes", "100")
    assert result.returncode == 2 and "over --max-restore-bytes 100" in result.stderr
    cut = tmp_path / "cut.snap"
    cut.write_bytes(record[:-1])
    assert "SNAPSHOT_TRUNCATED" in cli.fails("snapshot", "restore", str(cut))


def test_engine_mismatch_and_kind_mismatch(fleet: Fleet) -> None:
    tenant = "snap-engine"
    with fleet.client(tenant) as client:
        client.create_function("counter", _wasm(HIDDEN_COUNTER))
        digest = client.get_function("counter").module_digest
    stub, channel = fleet.store()
    token = stack_service_token(fleet.data_dir)
    metadata = [("x-tensorwasm-tenant", tenant)] + (
        [(SERVICE_TOKEN_METADATA_KEY, token)] if token else []
    )
    header = store_pb.CreateSnapshotHeader(
        kind=store_pb.SNAPSHOT_KIND_INSTANCE_STATE,
        engine_fingerprint="another-engine",
        source_digest=digest,
        variant="counter/" + "0" * 32 + "/save-x",
        payload_size_bytes=4,
    )
    with channel:
        made = stub.CreateSnapshot(
            iter(
                [
                    store_pb.CreateSnapshotRequest(header=header),
                    store_pb.CreateSnapshotRequest(chunk=b"abcd"),
                ]
            ),
            metadata=tuple(metadata),
        ).snapshot
    with fleet.client(tenant) as client:
        assert _reason(lambda: client.restore_instance(made.id)) == "ENGINE_FINGERPRINT_MISMATCH"
        assert client.list_instances() == []


def test_checkpointed_instance_survives_a_kill_of_its_executor(own_fleet: Fleet) -> None:
    fleet, tenant = own_fleet, "snap-checkpoint"
    with fleet.client(tenant) as client:
        client.create_function(
            "counter", _wasm(HIDDEN_COUNTER), gw.FunctionConfig(checkpoint_seconds=1)
        )
        before = fleet.handled("CreateInstance")
        instance = client.create_instance("counter").instance.name
        holder = next(n for n, c in fleet.handled("CreateInstance").items() if c > before[n])
        assert [_inc(client, instance) for _ in range(2)] == [1, 2]
        instance_id = instance.removeprefix("instances/")

        def checkpointed() -> bool:
            return any(
                r.variant == f"counter/{instance_id}/checkpoint" for r in fleet.records(tenant)
            )

        _wait_for(checkpointed, "the first checkpoint")
        (other,) = (n for n in EXECUTORS if n != holder)
        restores = _served(fleet.services[other], "RestoreInstance")
        fleet.launcher.kill(holder)  # kill -9
        # Same name, state as of the checkpoint, now on the other replica.
        assert _inc(client, instance) == 3
        assert _served(fleet.services[other], "RestoreInstance") == restores + 1
        assert _inc(client, instance, "stored") == 30
        assert client.get_instance(instance).name == instance
        # Deleting it deletes its checkpoint.
        client.delete_instance(instance)
        assert not checkpointed()


def test_checkpointed_instance_lost_before_its_first_checkpoint_is_not_found(
    own_fleet: Fleet,
) -> None:
    fleet, tenant = own_fleet, "snap-no-checkpoint"
    with fleet.client(tenant) as client:
        client.create_function(
            "counter", _wasm(HIDDEN_COUNTER), gw.FunctionConfig(checkpoint_seconds=3600)
        )
        before = fleet.handled("CreateInstance")
        instance = client.create_instance("counter").instance.name
        holder = next(n for n, c in fleet.handled("CreateInstance").items() if c > before[n])
        _inc(client, instance)
        fleet.launcher.kill(holder)
        assert _reason(lambda: _inc(client, instance)) == "INSTANCE_NOT_FOUND"
        assert _reason(lambda: client.get_instance(instance)) == "INSTANCE_NOT_FOUND"


def test_names_are_checked(fleet: Fleet) -> None:
    with fleet.client("snap-names") as client:
        assert _reason(lambda: client.restore_instance("snapshots/nope")) == "INVALID_NAME"
        assert _reason(lambda: client.restore_instance("snap_" + "0" * 32)) == "SNAPSHOT_NOT_FOUND"
        assert re.fullmatch(
            "INSTANCE_NOT_FOUND",
            _reason(lambda: client.snapshot_instance("instances/" + "0" * 32)),
        )
