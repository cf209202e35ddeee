"""Pre-initialised instances through the whole stack: init runs once (at deploy), its state
is what every call and live instance starts from, calls do not leak state into each other,
and a restarted executor reuses the image instead of running init again.

The fixture's init records a random stamp (WASI random_get): a second run of init would
almost surely record another, so equal stamps are timing-free evidence that it ran once.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as snapshot_pb
from tensorwasm_client.client import GatewayClient, TensorWasmError
from tensorwasm_common.channels import open_channel
from tensorwasm_common.snapshot_client import INSTANCE_IMAGE, SnapshotClient

pytestmark = pytest.mark.integration

Launch = Callable[[Path], Any]


def result(client: GatewayClient, function: str, export: str, *args: Value) -> Value:
    outcome = client.invoke(function, export, list(args)).outcome
    assert outcome.HasField("success"), outcome
    return outcome.success.results[0]


def image_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "executor" / "images").rglob("*.twimg"))


def test_init_runs_once_and_every_call_starts_from_its_state(
    client: GatewayClient, wasm: Callable[[str], bytes]
) -> None:
    function = client.create_function("table", wasm("preinit_table"))
    assert function.config.init_export == "wizer.initialize"  # the default, honoured
    stamp = result(client, "table", "stamp").i64
    assert stamp != 0
    lookups = {result(client, "table", "lookup", Value(i32=i)).i32 for i in (0, 1, 1000)}
    assert 0 not in lookups  # the table init built is there
    for _ in range(3):
        assert result(client, "table", "stamp").i64 == stamp
        assert result(client, "table", "init_runs").i32 == 1
        assert result(client, "table", "is_ready").i32 == 1  # an exported global from init
        assert result(client, "table", "bump").i32 == 1  # no state leaks between calls
    instance = client.create_instance("table").instance
    try:
        bumps = [client.call_instance(instance.name, "bump").outcome for _ in range(3)]
        assert [o.success.results[0].i32 for o in bumps] == [1, 2, 3]
        again = client.call_instance(instance.name, "stamp").outcome
        assert again.success.results[0].i64 == stamp
    finally:
        client.delete_instance(instance.name)
    assert result(client, "table", "bump").i32 == 1


def test_no_init_and_an_explicit_init_export(
    client: GatewayClient, wasm: Callable[[str], bytes]
) -> None:
    plain = client.create_function("plain", wasm("preinit_table"), pb.FunctionConfig(no_init=True))
    assert plain.config.init_export == "" and plain.config.no_init
    assert result(client, "plain", "init_runs").i32 == 0
    assert result(client, "plain", "lookup", Value(i32=5)).i32 == 0
    named = pb.FunctionConfig(init_export="wizer.initialize")
    client.create_function("named", wasm("preinit_table"), named)
    assert result(client, "named", "init_runs").i32 == 1
    assert client.get_function("named").config.init_export == "wizer.initialize"


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (pb.FunctionConfig(init_export="missing"), "INIT_EXPORT_INVALID"),
        (pb.FunctionConfig(init_export="lookup"), "INIT_EXPORT_INVALID"),
        (pb.FunctionConfig(init_export="stamp"), "INIT_EXPORT_INVALID"),
        (pb.FunctionConfig(init_export="wizer.initialize", no_init=True), "INIT_EXPORT_INVALID"),
    ],
    ids=["missing", "takes-params", "returns", "with-no-init"],
)
def test_a_bad_init_export_fails_the_deploy(
    client: GatewayClient, wasm: Callable[[str], bytes], config: pb.FunctionConfig, reason: str
) -> None:
    with pytest.raises(TensorWasmError) as caught:
        client.create_function("bad-init", wasm("preinit_table"), config)
    assert (caught.value.code, caught.value.reason) == ("INVALID_ARGUMENT", reason)
    with pytest.raises(TensorWasmError) as missing:
        client.get_function("bad-init")
    assert missing.value.reason == "FUNCTION_NOT_FOUND"


def test_a_trapping_init_fails_the_deploy_with_a_typed_error(client: GatewayClient) -> None:
    trapping = b"".join(
        [
            b"\x00asm\x01\x00\x00\x00",
            b"\x01\x04\x01\x60\x00\x00",  # type 0: () -> ()
            b"\x03\x02\x01\x00",  # one function of type 0
            b"\x07\x14\x01\x10wizer.initialize\x00\x00",  # exported as wizer.initialize
            b"\x0a\x05\x01\x03\x00\x00\x0b",  # body: unreachable
        ]
    )
    with pytest.raises(TensorWasmError) as caught:
        client.create_function("trap-init", trapping)
    assert (caught.value.code, caught.value.reason) == ("FAILED_PRECONDITION", "INIT_FAILED")
    assert caught.value.metadata["stage"] == "init"
    assert caught.value.metadata["trap_code"] == "UNREACHABLE"
    # With --no-init the same module deploys (and its init is just an export).
    client.create_function("trap-init", trapping, pb.FunctionConfig(no_init=True))


def test_a_restarted_executor_reuses_the_image_file(
    launch_stack: Launch, tmp_path: Path, wasm: Callable[[str], bytes]
) -> None:
    first = launch_stack(tmp_path)
    with first.client() as client:
        client.create_function("table", wasm("preinit_table"))
        stamp = result(client, "table", "stamp").i64
    assert len(image_files(tmp_path)) == 1
    first.stop()
    second = launch_stack(tmp_path)
    with second.client() as client:
        assert result(client, "table", "stamp").i64 == stamp
        assert result(client, "table", "init_runs").i32 == 1
    assert len(image_files(tmp_path)) == 1


def image_records(stack: Any, tenant: str) -> list[snapshot_pb.Snapshot]:
    """The tenant's INSTANCE_IMAGE records in the stack's store."""
    store = stack.services["snapshot"].grpc_address
    token = stack.launcher.service_token()

    async def main() -> list[snapshot_pb.Snapshot]:
        async with open_channel(store, service_token=token) as channel:
            page = await SnapshotClient(channel).list_snapshots(kind=INSTANCE_IMAGE, tenant=tenant)
        return list(page.snapshots)

    return asyncio.run(main())


def test_a_restarted_executor_without_local_files_takes_the_image_from_the_store(
    launch_stack: Launch, tmp_path: Path, wasm: Callable[[str], bytes]
) -> None:
    tenant = "preinit-store"
    first = launch_stack(tmp_path)
    with first.client(tenant) as client:
        client.create_function("table", wasm("preinit_table"))
        stamp = result(client, "table", "stamp").i64
    [record] = image_records(first, tenant)
    assert (record.variant, record.tenant) == ("wizer.initialize", tenant)
    first.stop()
    # The replica loses its local image and artifact files (a fresh disk).
    executor_dir = tmp_path / "executor"
    for local in ("images", "artifacts"):
        shutil.rmtree(executor_dir / local)
    assert image_files(tmp_path) == []
    second = launch_stack(tmp_path)
    with second.client(tenant) as client:
        # init's random stamp is the one of the first run: the image is the stored one.
        assert result(client, "table", "stamp").i64 == stamp
        assert result(client, "table", "init_runs").i32 == 1
        assert result(client, "table", "bump").i32 == 1
    # init did not run again: a second run would have replaced the record with a new one.
    assert image_records(second, tenant) == [record]
    # The image taken from the store is kept in the local file again.
    assert len(image_files(tmp_path)) == 1


def test_a_deleted_functions_images_are_released_once_no_function_of_the_tenant_runs_it(
    stack: Any, tenant: str, wasm: Callable[[str], bytes]
) -> None:
    with stack.client(tenant) as client:
        client.create_function("table", wasm("preinit_table"))
        client.create_function("twin", wasm("preinit_table"))  # the same module
        assert result(client, "table", "init_runs").i32 == 1
        [record] = image_records(stack, tenant)
        client.delete_function("table")
        assert image_records(stack, tenant) == [record]  # "twin" still runs the module
        assert result(client, "twin", "init_runs").i32 == 1
        client.delete_function("twin")
        assert image_records(stack, tenant) == []
        # Deployed again, the function starts from an image as before (the executor's
        # local one, or init run again).
        client.create_function("table", wasm("preinit_table"))
        assert result(client, "table", "init_runs").i32 == 1
        assert result(client, "table", "bump").i32 == 1


def test_two_tenants_deploying_one_module_get_images_of_their_own(
    stack: Any, tenant: str, wasm: Callable[[str], bytes]
) -> None:
    """init's random stamp stands for a secret init made (a key, say): a tenant deploying a
    module another tenant runs must not start from that tenant's init state."""
    stamps = []
    for who in (f"{tenant[:60]}-a", f"{tenant[:60]}-b"):
        with stack.client(who) as client:
            client.create_function("table", wasm("preinit_table"))
            stamps.append(result(client, "table", "stamp").i64)
            assert result(client, "table", "init_runs").i32 == 1
    assert stamps[0] != stamps[1]
