"""A function's configuration through the whole stack: WASI argv/env and the read-only
directory, default limits stored at deploy, per-tenant ceilings, and a unary call whose
client gives up stopping its guest."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
from tensorwasm.common.v1 import invocation_pb2
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.gateway.v1 import gateway_service_pb2_grpc as pb_grpc
from tensorwasm_client.client import GatewayClient, TensorWasmError, invocation_limits

from .conftest import RunningStack, start_stack

pytestmark = pytest.mark.integration


def _config(**wasi: object) -> pb.FunctionConfig:
    return pb.FunctionConfig(wasi=invocation_pb2.WasiConfig(**wasi))  # type: ignore[arg-type]


def test_argv_and_env_reach_the_guest(client: GatewayClient, wasm: Callable[[str], bytes]) -> None:
    config = _config(argv=["probe", "--fast"], env={"MODE": "prod", "EMPTY": ""})
    function = client.create_function("probe", wasm("wasi_probe"), config)
    assert list(function.config.wasi.argv) == ["probe", "--fast"]
    assert client.get_function("probe").config.wasi.env["MODE"] == "prod"
    assert client.invoke("probe", "args").outcome.stdout == b"probe\0--fast\0"
    assert client.invoke("probe", "environ").outcome.stdout == b"EMPTY=\0MODE=prod\0"


def test_read_only_directory_under_the_tenant_grant(
    stack: RunningStack, client: GatewayClient, tenant: str, wasm: Callable[[str], bytes]
) -> None:
    granted = stack.data_dir / "guest-dirs" / tenant / "assets"
    granted.mkdir(parents=True)
    (granted / "hello.txt").write_text("granted bytes\n")
    client.create_function("reader", wasm("wasi_probe"), _config(read_only_dir="assets"))
    outcome = client.invoke("reader", "cat").outcome
    assert (outcome.success.results[0].i32, outcome.stdout) == (0, b"granted bytes\n")
    created = client.invoke("reader", "create").outcome
    assert created.success.results[0].i32 != 0
    assert not (granted / "new.txt").exists()
    # Without a grant the guest has no filesystem at all (EBADF on fd 3).
    client.create_function("no-fs", wasm("wasi_probe"))
    assert client.invoke("no-fs", "cat").outcome.success.results[0].i32 == 8


def test_a_directory_that_is_not_granted_fails_the_deploy_and_the_call(
    stack: RunningStack, client: GatewayClient, tenant: str, wasm: Callable[[str], bytes]
) -> None:
    other = stack.data_dir / "guest-dirs" / f"{tenant}-x" / "data"
    other.mkdir(parents=True)
    with pytest.raises(TensorWasmError) as refused:  # at deploy, naming where grants live
        client.create_function("missing-dir", wasm("wasi_probe"), _config(read_only_dir="data"))
    assert (refused.value.code, refused.value.reason) == (
        "INVALID_ARGUMENT",
        "DIRECTORY_NOT_GRANTED",
    )
    assert f"<TENSORWASM_EXECUTOR_GUEST_DIRS_ROOT>/{tenant}/" in refused.value.message
    assert "missing-dir" not in [f.name.split("/")[-1] for f in client.list_functions()]
    granted = stack.data_dir / "guest-dirs" / tenant / "data"
    granted.mkdir(parents=True)
    client.create_function("missing-dir", wasm("wasi_probe"), _config(read_only_dir="data"))
    granted.rmdir()  # a grant withdrawn after deploy fails the call
    with pytest.raises(TensorWasmError) as caught:
        client.invoke("missing-dir", "cat")
    assert (caught.value.code, caught.value.reason) == ("INVALID_ARGUMENT", "DIRECTORY_NOT_GRANTED")


@pytest.mark.parametrize(
    "config",
    [
        _config(argv=["a\0b"]),
        _config(env={"A=B": "1"}),
        _config(read_only_dir="../other-tenant"),
        _config(read_only_dir="/etc"),
        _config(read_only_dir="x", guest_dir="relative"),
    ],
    ids=["nul-argv", "bad-env-name", "dotdot", "absolute", "relative-guest-dir"],
)
def test_malformed_configs_are_refused_at_deploy(
    client: GatewayClient, wasm: Callable[[str], bytes], config: pb.FunctionConfig
) -> None:
    with pytest.raises(TensorWasmError) as caught:
        client.create_function("bad-config", wasm("wasi_probe"), config)
    assert (caught.value.code, caught.value.reason) == ("INVALID_ARGUMENT", "INVALID_WASI_CONFIG")
    with pytest.raises(TensorWasmError) as missing:
        client.get_function("bad-config")  # nothing was recorded
    assert missing.value.reason == "FUNCTION_NOT_FOUND"


def test_default_limits_apply_unless_the_call_sets_its_own(
    client: GatewayClient, wasm: Callable[[str], bytes]
) -> None:
    config = pb.FunctionConfig(default_limits=invocation_limits(0.2, 0, 0))
    client.create_function("spinner", wasm("counter"), config)
    started = time.monotonic()
    spun = client.invoke("spinner", "spin").outcome
    assert spun.failure.reason == "DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 5  # the function's 0.2 s, not the executor's 10 s
    negative = pb.FunctionConfig(
        default_limits=invocation_pb2.InvocationLimits(max_output_bytes=-1)
    )
    with pytest.raises(TensorWasmError) as caught:
        client.create_function("negative", wasm("counter"), negative)
    assert caught.value.code == "INVALID_ARGUMENT"


@pytest.fixture(scope="module")
def ceilinged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    data = tmp_path_factory.mktemp("ceilings")
    limits = data / "tenant-limits.json"
    limits.write_text(
        json.dumps(
            {
                "default": {"timeout_seconds": 0.3, "max_output_bytes": 4},
                "tenants": {"vip": {"timeout_seconds": 30}},
            }
        )
    )
    running = start_stack(
        data / "stack",
        {
            "TENSORWASM_GATEWAY_TENANT_LIMITS_FILE": str(limits),
            "TENSORWASM_EXECUTOR_MAX_IN_FLIGHT_PER_TENANT": "1",
        },
    )
    try:
        yield running
    finally:
        running.stop()


def test_tenant_ceilings_clamp_requests_and_defaults(
    ceilinged: RunningStack, wasm: Callable[[str], bytes]
) -> None:
    with ceilinged.client("plain") as plain, ceilinged.client("vip") as vip:
        plain.create_function("counter", wasm("counter"))
        started = time.monotonic()
        spun = plain.invoke("counter", "spin", timeout_seconds=60).outcome
        assert spun.failure.reason == "DEADLINE_EXCEEDED"
        assert time.monotonic() - started < 5  # clamped from 60 s to the 0.3 s ceiling
        # The start function's "started\n" is capped at the 4-byte output ceiling.
        created = plain.create_instance("counter")
        assert (created.outcome.stdout, created.outcome.stdout_truncated) == (b"star", True)
        plain.delete_instance(created.instance.name)
        vip.create_function("counter", wasm("counter"))
        vip_created = vip.create_instance("counter")  # vip's own entry has no output cap
        assert vip_created.outcome.stdout == b"started\n"
        vip.delete_instance(vip_created.instance.name)


def test_a_unary_call_whose_client_gives_up_frees_its_slot(
    ceilinged: RunningStack, wasm: Callable[[str], bytes]
) -> None:
    with ceilinged.client("vip") as vip:
        vip.create_function("looper", wasm("counter"))
    channel = grpc.insecure_channel(ceilinged.gateway)
    stub = pb_grpc.GatewayServiceStub(channel)
    metadata = (("x-tensorwasm-tenant", "vip"),)
    request = pb.InvokeRequest(
        name="functions/looper", export_name="spin", limits=invocation_limits(25, 0, 0)
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.Invoke(request, metadata=metadata, timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # vip may run one call at a time: the next call is admitted only once the abandoned
    # guest has stopped, which must take about an epoch tick, not its 25 s deadline.
    deadline = time.monotonic() + 5
    while True:
        try:
            response = stub.Invoke(
                pb.InvokeRequest(name="functions/looper", export_name="inc"),
                metadata=metadata,
                timeout=10,
            )
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            assert time.monotonic() < deadline, "the abandoned guest kept its slot"
            time.sleep(0.05)
    assert response.outcome.success.results[0].i32 == 1
    channel.close()


def test_guest_dirs_are_optional() -> None:
    """The shared stacks grant <data dir>/guest-dirs; the setting itself defaults to none."""
    from tensorwasm_executor.settings import ExecutorSettings

    assert ExecutorSettings().guest_dirs_root is None
