"""TLS and mTLS on every hop, on real processes: a stack started with TLS (`tensorwasm up
--tls`'s certificates) deploys and invokes over mTLS gateway -> executor -> store and
serves HTTPS; plaintext, a wrong CA and a missing client certificate are refused; a
rotated certificate is picked up without a restart; bad files stop a service at start."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import wasmtime
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorwasm.common.v1 import values_pb2
from tensorwasm_client.client import GatewayClient, TensorWasmError, TlsOptions
from tensorwasm_client.local_certs import issue, make_authority
from tensorwasm_client.stack import LocalStack, stack_tls

from tests.integration.conftest import RunningStack

pytestmark = pytest.mark.integration
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "wat"
ADD = bytes(wasmtime.wat2wasm((FIXTURES / "add.wat").read_text()))
TENANT = "tls-tenant"


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """A stack whose every hop is mTLS, as `tensorwasm up --tls` starts it."""
    launcher = LocalStack(tmp_path_factory.mktemp("tls-stack"), ephemeral_ports=True, tls=True)
    running = RunningStack(launcher, launcher.start())
    try:
        yield running
    finally:
        running.stop()


def _client_tls(stack: RunningStack) -> TlsOptions:
    tls = stack_tls(stack.data_dir)
    assert tls is not None
    return tls


def _health(address: str, credentials: grpc.ChannelCredentials | None) -> str:
    """SERVING, or the status code name the call failed with."""
    channel = (
        grpc.insecure_channel(address)
        if credentials is None
        else grpc.secure_channel(address, credentials)
    )
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def test_deploy_and_invoke_over_mtls_on_every_hop(tls_stack: RunningStack) -> None:
    # gateway -> store (the module), gateway -> executor -> store (the artifact): all mTLS
    with GatewayClient(tls_stack.gateway, tenant=TENANT, tls=_client_tls(tls_stack)) as client:
        client.create_function("add", ADD)
        result = client.invoke("add", "add", [values_pb2.Value(i32=2), values_pb2.Value(i32=3)])
        assert list(result.outcome.success.results) == [values_pb2.Value(i32=5)]
        with pytest.raises(TensorWasmError) as missing:
            client.invoke("nope", "add")
    assert (missing.value.code, missing.value.reason) == ("NOT_FOUND", "FUNCTION_NOT_FOUND")


@pytest.mark.parametrize("service", ["gateway", "executor", "snapshot", "dispatcher", "jit"])
def test_plaintext_is_refused_when_tls_is_on(tls_stack: RunningStack, service: str) -> None:
    address = tls_stack.services[service].grpc_address
    assert _health(address, None) == "UNAVAILABLE"
    assert _health(address, _client_tls(tls_stack).credentials()) == "SERVING"


def test_a_wrong_ca_and_a_missing_client_certificate_are_refused(
    tls_stack: RunningStack, tmp_path: Path
) -> None:
    tls = _client_tls(tls_stack)
    other = make_authority(tmp_path / "other")
    stranger = issue(other, "stranger", ["localhost"], tmp_path / "other")
    address = tls_stack.gateway
    # the server's certificate is not signed by the CA the client trusts
    wrong_ca = TlsOptions(other.cert_file, tls.cert_file, tls.key_file)
    assert _health(address, wrong_ca.credentials()) == "UNAVAILABLE"
    # the right CA, but no client certificate: mTLS refuses the handshake
    no_client_cert = TlsOptions(tls.ca_file)
    assert _health(address, no_client_cert.credentials()) == "UNAVAILABLE"
    # a client certificate from a CA the server does not trust
    foreign_client = TlsOptions(tls.ca_file, stranger.cert_file, stranger.key_file)
    assert _health(address, foreign_client.credentials()) == "UNAVAILABLE"


def test_the_http_face_serves_https_with_client_certificates(tls_stack: RunningStack) -> None:
    tls = _client_tls(tls_stack)
    with GatewayClient(tls_stack.gateway, tenant=TENANT, tls=tls) as client:
        client.create_function("add-https", ADD)
    host, port = tls_stack.services["gateway"].http_address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(tls.ca_file))
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=30)
    try:
        connection.request(
            "POST",
            "/functions/add-https/invoke",
            body=json.dumps({"export": "add", "args": [20, 22]}),
            headers={"x-tensorwasm-tenant": TENANT},
        )
        reply = connection.getresponse()
        body = reply.read()
    finally:
        connection.close()
    # through the face's own TLS channel to the gateway's gRPC port
    assert reply.status == 200, body
    assert json.loads(body)["result"] == [42], body
    # without a client certificate the handshake fails
    bare = ssl.create_default_context(cafile=str(tls.ca_file))
    refused = http.client.HTTPSConnection(host, int(port), context=bare, timeout=30)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        refused.request("GET", "/healthz")
        refused.getresponse().read()
    refused.close()


def _start_jit(
    tmp_path: Path, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    ready = tmp_path / "jit.ready.json"
    log = tmp_path / "jit.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "tensorwasm_jit"],
            env={
                **os.environ,
                "TENSORWASM_JIT_LISTEN_ADDRESS": "127.0.0.1:0",
                "TENSORWASM_JIT_METRICS_ADDRESS": "",
                "TENSORWASM_JIT_READY_FILE": str(ready),
                "TENSORWASM_JIT_DATA_DIR": str(tmp_path / "jit"),
                **env,
            },
            stdout=sink,
            stderr=sink,
        )
    deadline = time.monotonic() + 60
    while not ready.exists():
        if process.poll() is not None:
            raise AssertionError(log.read_text())
        assert time.monotonic() < deadline, "the jit cache did not start"
        time.sleep(0.05)
    return process, json.loads(ready.read_text())


def test_a_rotated_certificate_is_used_without_a_restart_and_probes_stay_plaintext(
    tmp_path: Path,
) -> None:
    old_ca = make_authority(tmp_path / "old")
    new_ca = make_authority(tmp_path / "new")
    served = tmp_path / "served"
    first = issue(old_ca, "jit", ["127.0.0.1"], served)
    process, ready = _start_jit(
        tmp_path,
        {"TENSORWASM_JIT_TLS_CERT_FILE": str(first.cert_file),
         "TENSORWASM_JIT_TLS_KEY_FILE": str(first.key_file),
         "TENSORWASM_JIT_HEALTH_ADDRESS": "127.0.0.1:0"},
    )  # fmt: skip
    address = ready["grpc_address"]
    try:
        # the probes' port: plaintext, grpc.health.v1 only, the main server's status
        assert _health(ready["health_address"], None) == "SERVING"
        with (
            grpc.insecure_channel(ready["health_address"]) as probe,
            pytest.raises(grpc.RpcError) as unknown,
        ):
            emit: Any = probe.unary_unary("/tensorwasm.jit.v1.JitCacheService/EmitKernel")
            emit(b"", timeout=10)
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
        trusts_old = grpc.ssl_channel_credentials(old_ca.cert_file.read_bytes())
        trusts_new = grpc.ssl_channel_credentials(new_ca.cert_file.read_bytes())
        assert _health(address, trusts_old) == "SERVING"
        assert _health(address, trusts_new) == "UNAVAILABLE"
        # rotate in place: a pair from the new CA over the same two files
        issue(new_ca, "jit", ["127.0.0.1"], served)
        deadline = time.monotonic() + 60
        while _health(address, trusts_new) != "SERVING":
            assert time.monotonic() < deadline, "the rotated certificate was never served"
            time.sleep(0.1)
        assert _health(address, trusts_old) == "UNAVAILABLE"
        assert process.poll() is None  # the same process: no restart
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_bad_certificate_files_stop_the_service_naming_the_setting(tmp_path: Path) -> None:
    authority = make_authority(tmp_path)
    now = datetime.datetime.now(datetime.UTC)
    expired = issue(
        authority, "expired", ["127.0.0.1"], tmp_path,
        not_before=now - datetime.timedelta(days=2), not_after=now - datetime.timedelta(days=1),
    )  # fmt: skip
    good = issue(authority, "good", ["127.0.0.1"], tmp_path)
    cases = {
        "tls_cert_file: the certificate CN=expired": (expired.cert_file, expired.key_file),
        "tls_key_file: the key in": (good.cert_file, expired.key_file),
        "tls_cert_file: cannot read": (tmp_path / "missing.pem", good.key_file),
    }
    for expected, (cert_file, key_file) in cases.items():
        result = subprocess.run(
            [sys.executable, "-m", "tensorwasm_jit"],
            env={
                **os.environ,
                "TENSORWASM_JIT_LISTEN_ADDRESS": "127.0.0.1:0",
                "TENSORWASM_JIT_TLS_CERT_FILE": str(cert_file),
                "TENSORWASM_JIT_TLS_KEY_FILE": str(key_file),
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 2, result.stderr
        assert f"invalid settings: jit settings: {expected}" in result.stderr


def test_the_cli_reaches_a_tls_stack_with_its_options(tls_stack: RunningStack) -> None:
    from tensorwasm_client.cli import app
    from typer.testing import CliRunner

    tls = _client_tls(tls_stack)
    base = [
        "--gateway",
        tls_stack.gateway,
        "--tenant",
        TENANT,
        "--data-dir",
        str(tls_stack.data_dir),
    ]
    runner = CliRunner()
    with_tls = [*base, "--ca-file", str(tls.ca_file), "--cert", str(tls.cert_file),
                "--key", str(tls.key_file)]  # fmt: skip
    example = str(Path(__file__).resolve().parents[2] / "clients/guest/examples/add.wat")
    deployed = runner.invoke(app, [*with_tls, "deploy", example, "--name", "add-cli"])
    assert deployed.exit_code == 0, deployed.output
    invoked = runner.invoke(
        app, [*with_tls, "invoke", "add-cli", "--export", "add", "--args", "[1, 2]"]
    )
    assert (invoked.exit_code, invoked.output.strip()) == (0, "[3]"), invoked.output
    # without the client certificate the gateway refuses the handshake
    refused = runner.invoke(
        app, [*base, "--ca-file", str(tls.ca_file), "invoke", "add-cli", "--export", "add"]
    )
    assert refused.exit_code == 1 and "UNAVAILABLE" in refused.output, refused.output
    # `status` reads the stack's certificates from its data dir
    status = runner.invoke(app, [*base, "status"])
    assert status.exit_code == 0 and status.output.count("SERVING") == 5, status.output
