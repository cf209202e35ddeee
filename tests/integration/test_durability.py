"""Deployed functions survive a restart of the whole stack, graceful or by SIGKILL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as snapshot_pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as snapshot_pb_grpc
from tensorwasm_client.client import TensorWasmError

pytestmark = pytest.mark.integration

Launch = Callable[[Path], Any]


def stored_blob(data_dir: Path, digest: str) -> Path:
    return data_dir / "snapshot" / "blobs" / digest[:2] / digest


def test_functions_survive_a_graceful_restart(
    launch_stack: Launch, tmp_path: Path, wasm: Callable[[str], bytes]
) -> None:
    first = launch_stack(tmp_path)
    with first.client() as client, first.client("other") as other:
        add = client.create_function("add", wasm("add"))
        echo = client.create_function("echo", wasm("wasi_echo"))
        numeric = other.create_function("numeric", wasm("numeric"))
    first.stop()
    assert not first.launcher.running()
    for function in (add, echo, numeric):
        assert stored_blob(tmp_path, function.module_digest).is_file()

    second = launch_stack(tmp_path)
    assert second.services["executor"].pid != first.services["executor"].pid
    with second.client() as client, second.client("other") as other:
        assert list(client.list_functions()) == [add, echo]
        assert list(other.list_functions()) == [numeric]
        # A fresh executor has nothing cached: each call fetches the module from the store.
        assert list(
            client.invoke("add", "add", [Value(i32=40), Value(i32=2)]).outcome.success.results
        ) == [Value(i32=42)]
        assert client.invoke("echo", stdin=b"again").outcome.stdout == b"hello stdout\nagain"
        assert list(
            other.invoke("numeric", "id_f32", [Value(f32_bits=0x7FA00000)]).outcome.success.results
        ) == [Value(f32_bits=0x7FA00000)]
        # New deploys still work, and the old names are still taken.
        client.create_function("add-again", wasm("add"))
        with pytest.raises(TensorWasmError) as caught:
            client.create_function("add", wasm("add"))
        assert caught.value.reason == "FUNCTION_ALREADY_EXISTS"

    # The store serves the blobs it kept.
    with second.internal_channel("snapshot") as channel:
        store = snapshot_pb_grpc.SnapshotStoreServiceStub(channel)
        for function, module in ((add, wasm("add")), (numeric, wasm("numeric"))):
            info = store.StatBlob(
                snapshot_pb.StatBlobRequest(digest=function.module_digest), timeout=10
            ).blob
            assert (info.digest, info.size_bytes) == (function.module_digest, len(module))
            chunks = list(
                store.GetBlob(snapshot_pb.GetBlobRequest(digest=function.module_digest), timeout=10)
            )
            assert b"".join(c.chunk for c in chunks) == module

    # While the executor is down, calls fail as UNAVAILABLE and the registry is still served.
    second.launcher.kill("executor")
    with second.client() as client:
        with pytest.raises(TensorWasmError) as caught:
            client.invoke("add", "add", [Value(i32=1), Value(i32=2)])
        assert (caught.value.code, caught.value.reason) == ("UNAVAILABLE", "UPSTREAM_UNAVAILABLE")
        assert client.get_function("add") == add


def test_a_deploy_survives_sigkill_of_the_gateway(
    launch_stack: Launch, tmp_path: Path, wasm: Callable[[str], bytes]
) -> None:
    first = launch_stack(tmp_path)
    with first.client() as client:
        created = client.create_function("add", wasm("add"))
    first.launcher.kill("gateway")  # no chance to flush or close anything
    assert not Path(f"/proc/{first.services['gateway'].pid}").exists()
    first.stop()

    second = launch_stack(tmp_path)
    with second.client() as client:
        assert list(client.list_functions()) == [created]
        response = client.invoke("add", "add", [Value(i32=1), Value(i32=2)])
        assert list(response.outcome.success.results) == [Value(i32=3)]
