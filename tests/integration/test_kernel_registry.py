"""The signed kernel registry end to end on a real stack: publish, list, get and verify
through the CLI, gRPC and the HTTP face; each bad publication refused with its own reason,
storing nothing; a guest resolving a registered kernel by name@version and launching it on
the dispatcher's cpu backend."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import grpc
import pytest
import wasmtime
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2 as snapshot_pb
from tensorwasm.snapshot.v1 import snapshot_service_pb2_grpc as snapshot_grpc
from tensorwasm_client.client import GatewayClient, TensorWasmError
from tensorwasm_client.kernels import key_id, sign, signed_manifest
from tensorwasm_common.kernel_records import (
    KERNEL_FINGERPRINT,
    KERNEL_KIND,
    KERNEL_TENANT,
    kernel_record_key,
)

from tests.guests import NO_CLANG, TENSORWASM, find_clang, load_builder
from tests.integration.conftest import RunningStack, start_stack
from tests.integration.test_gateway_replicas import SecondGateway

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PTX_FILE = ROOT / "kernels" / "tensorwasm_kernels" / "ptx" / "vector_add.ptx"
PTX = PTX_FILE.read_bytes()
C_GUEST = ROOT / "clients" / "guest" / "examples" / "cuda" / "registered_vector_add.c"
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
ADMIN = "admin-token-0123456789abcdef"
PUBLISHER = "publisher-token-0123456789abcdef"
TENANT_A = "tenant-a-token-0123456789abcdef"
TENANT_B = "tenant-b-token-0123456789abcdef"
TOKENS = f"{ADMIN}:role=admin;{PUBLISHER}:role=publish;{TENANT_A}:tenant=ta;{TENANT_B}:tenant=tb"

# The guest of the registry's ABI in WAT: `run(name_ptr, name_len, version_ptr, version_len)`
# resolves a kernel, runs vector_add over f32[64] and returns 0, a negative code or 1 + the
# first wrong index. Memory: 0 "vector_add.f32" | 32 "1.0.0" | 48 "9.9.9" | 64 argv
# | 1024 a[64] | 1280 b[64] | 1536 c[64].
WAT_GUEST = """
(module
  (import "tensorwasm:gpu/host@0.1.0" "kernel_by_name"
    (func $kernel_by_name (param i32 i32 i32 i32) (result i64)))
  (import "wasi:cuda/host@0.2.0" "wasi_cuda_launch"
    (func $launch (param i64 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi:cuda/host@0.2.0" "wasi_cuda_sync" (func $sync (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "vector_add.f32")
  (data (i32.const 32) "1.0.0")
  (data (i32.const 48) "9.9.9")
  (func $ptr_record (param $at i32) (param $offset i32) (param $length i32)
    (i32.store8 (local.get $at) (i32.const 0x07))
    (i32.store (i32.add (local.get $at) (i32.const 1)) (local.get $offset))
    (i32.store (i32.add (local.get $at) (i32.const 5)) (local.get $length)))
  (func (export "run") (param i32 i32 i32 i32) (result i32)
    (local $i i32) (local $at i32) (local $kernel i64) (local $rc i32)
    (loop $fill
      (local.set $at (i32.shl (local.get $i) (i32.const 2)))
      (f32.store (i32.add (i32.const 1024) (local.get $at)) (f32.convert_i32_s (local.get $i)))
      (f32.store (i32.add (i32.const 1280) (local.get $at)) (f32.const 0.5))
      (f32.store (i32.add (i32.const 1536) (local.get $at)) (f32.const -1))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $fill (i32.lt_u (local.get $i) (i32.const 64))))
    (local.set $kernel
      (call $kernel_by_name (local.get 0) (local.get 1) (local.get 2) (local.get 3)))
    (if (i64.lt_s (local.get $kernel) (i64.const 0))
      (then (return (i32.wrap_i64 (local.get $kernel)))))
    (call $ptr_record (i32.const 64) (i32.const 1024) (i32.const 256))
    (call $ptr_record (i32.const 73) (i32.const 1280) (i32.const 256))
    (call $ptr_record (i32.const 82) (i32.const 1536) (i32.const 256))
    (i32.store8 (i32.const 91) (i32.const 0x05))
    (i32.store (i32.const 92) (i32.const 64))
    (local.set $rc (call $launch (local.get $kernel)
      (i32.const 1) (i32.const 1) (i32.const 1) (i32.const 64) (i32.const 1) (i32.const 1)
      (i32.const 0) (i32.const 64) (i32.const 32)))
    (if (local.get $rc) (then (return (local.get $rc))))
    (local.set $rc (call $sync))
    (if (local.get $rc) (then (return (local.get $rc))))
    (local.set $i (i32.const 0))
    (loop $check
      (local.set $at (i32.shl (local.get $i) (i32.const 2)))
      (if (f32.ne (f32.load (i32.add (i32.const 1536) (local.get $at)))
                  (f32.add (f32.load (i32.add (i32.const 1024) (local.get $at))) (f32.const 0.5)))
        (then (return (i32.add (local.get $i) (i32.const 1)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $check (i32.lt_u (local.get $i) (i32.const 64))))
    (i32.const 0)))
"""


@pytest.fixture(scope="module")
def registry_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """A stack whose gateway has a kernel key and bearer tokens (admin, publish, tenants)."""
    data_dir = tmp_path_factory.mktemp("kernel-registry")
    key_file = data_dir / "kernel.key"
    key_file.write_text(KEY.hex() + "\n")
    running = start_stack(
        data_dir,
        {
            "TENSORWASM_GATEWAY_KERNEL_HMAC_KEY_FILE": str(key_file),
            "TENSORWASM_GATEWAY_TOKENS": TOKENS,
        },
    )
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "registry.key"
    path.write_text(KEY.hex())
    return path


def _client(stack: RunningStack, token: str, tenant: str | None = None) -> GatewayClient:
    return GatewayClient(stack.gateway, tenant=tenant, token=token)


def _cli(
    stack: RunningStack, token: str, tenant: str, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TENSORWASM), "--gateway", stack.gateway, "--tenant", tenant, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "TENSORWASM_TOKEN": token},
    )


def _error(call: Any) -> TensorWasmError:
    with pytest.raises(TensorWasmError) as caught:
        call()
    return caught.value


def _record_exists(stack: RunningStack, namespace: str, name: str, version: str) -> bool:
    """Whether the snapshot store holds the kernel's PTX record."""
    source_digest, variant = kernel_record_key(namespace, name, version)
    request = snapshot_pb.FindSnapshotRequest(
        kind=KERNEL_KIND,
        source_digest=source_digest,
        variant=variant,
        engine_fingerprint=KERNEL_FINGERPRINT,
    )
    with stack.internal_channel("snapshot") as channel:
        stub = snapshot_grpc.SnapshotStoreServiceStub(channel)
        try:
            stub.FindSnapshot(
                request, timeout=30, metadata=(("x-tensorwasm-tenant", KERNEL_TENANT),)
            )
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
            return False
    return True


def test_cli_publishes_lists_gets_and_verifies(
    registry_stack: RunningStack, key_file: Path, tmp_path: Path
) -> None:
    stack = registry_stack
    published = _cli(
        stack, PUBLISHER, "ta", "kernel", "publish", "cli.vadd", "1.2.3-rc.1+build.5",
        "--ptx-file", str(PTX_FILE), "--sm", "80", "--key-file", str(key_file),
    )  # fmt: skip
    assert published.returncode == 0, published.stderr
    manifest = json.loads(published.stdout)
    assert manifest["digest"] == blake3.blake3(PTX).hexdigest()
    assert manifest["entry"] == "vector_add" and manifest["visibility"] == "shared"
    assert manifest["key_id"] == key_id(KEY) and manifest["ptx_size_bytes"] == len(PTX)

    # a shared kernel: another tenant lists and reads it
    listed = _cli(stack, TENANT_B, "tb", "kernel", "list")
    assert listed.returncode == 0, listed.stderr
    assert "cli.vadd@1.2.3-rc.1+build.5" in listed.stdout
    ptx_out = tmp_path / "fetched.ptx"
    got = _cli(stack, TENANT_B, "tb", "kernel", "get", "cli.vadd@1.2.3-rc.1+build.5",
               "--ptx-out", str(ptx_out))  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["signature"] == manifest["signature"]
    assert ptx_out.read_bytes() == PTX

    verified = _cli(stack, TENANT_B, "tb", "kernel", "verify", "cli.vadd@1.2.3-rc.1+build.5",
                    "--key-file", str(key_file))  # fmt: skip
    assert verified.returncode == 0, verified.stderr
    assert "valid" in verified.stdout
    wrong_key = tmp_path / "wrong.key"
    wrong_key.write_text(OTHER_KEY.hex())
    refused = _cli(stack, TENANT_B, "tb", "kernel", "verify", "cli.vadd@1.2.3-rc.1+build.5",
                   "--key-file", str(wrong_key))  # fmt: skip
    assert refused.returncode == 2
    assert "INVALID: the manifest was signed with another key" in refused.stderr

    again = _cli(
        stack, PUBLISHER, "ta", "kernel", "publish", "cli.vadd", "1.2.3-rc.1+build.5",
        "--ptx-file", str(PTX_FILE), "--sm", "80", "--key-file", str(key_file),
    )  # fmt: skip
    assert again.returncode == 1 and "KERNEL_ALREADY_EXISTS" in again.stderr
    missing = _cli(stack, TENANT_B, "tb", "kernel", "get", "cli.vadd@9.9.9")
    assert missing.returncode == 1 and "KERNEL_NOT_FOUND" in missing.stderr


def test_grpc_publish_get_list_and_duplicate(registry_stack: RunningStack) -> None:
    with _client(registry_stack, ADMIN, "ta") as admin:
        stored = admin.publish_kernel(
            signed_manifest(KEY, "grpc.vadd", "2.0.0", 86, PTX), PTX.decode()
        )
        assert stored.namespace == "" and stored.visibility == pb.KERNEL_VISIBILITY_SHARED
        assert stored.publisher.startswith("tok_") and stored.publish_time.seconds > 0
        duplicate = _error(
            lambda: admin.publish_kernel(
                signed_manifest(KEY, "grpc.vadd", "2.0.0", 80, PTX), PTX.decode()
            )
        )
        assert (duplicate.code, duplicate.reason) == ("ALREADY_EXISTS", "KERNEL_ALREADY_EXISTS")
    with _client(registry_stack, TENANT_B, "tb") as reader:
        found = reader.get_kernel("grpc.vadd", "2.0.0")
        assert found.ptx_text.encode() == PTX
        assert found.manifest.sm_version == 86  # the first publish stands
        assert found.manifest.signature == sign(
            KEY, "grpc.vadd", "2.0.0", 86, blake3.blake3(PTX).digest()
        )
        names = [(m.name, m.version) for m in reader.list_kernels(page_size=1)]
        assert ("grpc.vadd", "2.0.0") in names
        assert names == sorted(names)


@dataclasses.dataclass(frozen=True)
class BadCase:
    """A publication the registry must refuse with `reason`, storing nothing."""

    reason: str
    code: str
    name: str = "bad.vadd"
    version: str = "1.0.0"
    sm_version: int = 80
    ptx: bytes = PTX
    key: bytes = KEY
    tamper: str = ""  # "signature", "digest", "no_key_id", "ptx"


BAD_CASES = {
    "tampered_signature": BadCase("KERNEL_BAD_SIGNATURE", "PERMISSION_DENIED", tamper="signature"),
    "tampered_manifest": BadCase("KERNEL_BAD_SIGNATURE", "PERMISSION_DENIED", tamper="sm_version"),
    "digest_mismatch": BadCase("KERNEL_DIGEST_MISMATCH", "INVALID_ARGUMENT", tamper="ptx"),
    "digest_checked_before_signature": BadCase(
        "KERNEL_DIGEST_MISMATCH", "INVALID_ARGUMENT", key=OTHER_KEY, tamper="ptx"
    ),
    "wrong_key": BadCase("KERNEL_SIGNING_KEY_MISMATCH", "PERMISSION_DENIED", key=OTHER_KEY),
    "wrong_key_unnamed": BadCase(
        "KERNEL_BAD_SIGNATURE", "PERMISSION_DENIED", key=OTHER_KEY, tamper="no_key_id"
    ),
    "ptx_over_8_mib": BadCase(
        "KERNEL_PTX_TOO_LARGE", "INVALID_ARGUMENT", ptx=PTX + b"\n//" + b"x" * (8 << 20)
    ),
    "version_not_semver": BadCase("KERNEL_VERSION_INVALID", "INVALID_ARGUMENT", version="1.0"),
    "name_with_slash": BadCase("KERNEL_NAME_INVALID", "INVALID_ARGUMENT", name="a/b"),
    "sm_version_zero": BadCase("KERNEL_MANIFEST_INVALID", "INVALID_ARGUMENT", sm_version=0),
    "short_digest": BadCase("KERNEL_MANIFEST_INVALID", "INVALID_ARGUMENT", tamper="digest"),
}


@pytest.mark.parametrize("case", BAD_CASES.values(), ids=BAD_CASES.keys())
def test_each_bad_publication_has_its_reason_and_stores_nothing(
    registry_stack: RunningStack, case: BadCase
) -> None:
    manifest = signed_manifest(case.key, case.name, case.version, case.sm_version, case.ptx)
    ptx = case.ptx
    if case.tamper == "signature":
        manifest.signature = bytes([manifest.signature[0] ^ 1]) + manifest.signature[1:]
    elif case.tamper == "sm_version":
        manifest.sm_version = 90  # signed as 80
    elif case.tamper == "ptx":
        ptx = ptx.replace(b"add.f32", b"sub.f32")
    elif case.tamper == "no_key_id":
        manifest.key_id = ""
    elif case.tamper == "digest":
        manifest.digest = manifest.digest[:16]
    with _client(registry_stack, ADMIN, "ta") as admin:
        error = _error(lambda: admin.publish_kernel(manifest, ptx.decode()))
        assert (error.code, error.reason) == (case.code, case.reason), error
        missing = _error(lambda: admin.get_kernel(case.name, case.version))
        assert missing.reason in {"KERNEL_NOT_FOUND"}
        assert (case.name, case.version) not in {(m.name, m.version) for m in admin.list_kernels()}
    assert not _record_exists(registry_stack, "", case.name, case.version)


def test_publish_scope_and_private_namespaces(registry_stack: RunningStack) -> None:
    with _client(registry_stack, TENANT_A, "ta") as tenant_a:
        shared = signed_manifest(KEY, "scoped.vadd", "1.0.0", 80, PTX)
        refused = _error(lambda: tenant_a.publish_kernel(shared, PTX.decode()))
        assert (refused.code, refused.reason) == (
            "PERMISSION_DENIED",
            "KERNEL_PUBLISH_SCOPE_REQUIRED",
        )
        assert not _record_exists(registry_stack, "", "scoped.vadd", "1.0.0")
        private = signed_manifest(KEY, "scoped.vadd", "1.0.0", 80, PTX, private=True)
        stored = tenant_a.publish_kernel(private, PTX.decode())
        assert (stored.namespace, stored.visibility) == ("ta", pb.KERNEL_VISIBILITY_PRIVATE)
        assert tenant_a.get_kernel("scoped.vadd", "1.0.0").ptx_text.encode() == PTX
    with _client(registry_stack, TENANT_B, "tb") as tenant_b:
        hidden = _error(lambda: tenant_b.get_kernel("scoped.vadd", "1.0.0"))
        assert hidden.reason == "KERNEL_NOT_FOUND"
        assert "scoped.vadd" not in {m.name for m in tenant_b.list_kernels()}
        # tb may publish its own private kernel of the same name@version
        tenant_b.publish_kernel(
            signed_manifest(KEY, "scoped.vadd", "1.0.0", 75, PTX, private=True), PTX.decode()
        )
        assert tenant_b.get_kernel("scoped.vadd", "1.0.0").manifest.sm_version == 75


def _guest_result(client: GatewayClient, function: str, export: str, args: list[Value]) -> int:
    outcome = client.invoke(function, export, args, timeout_seconds=120).outcome
    assert outcome.WhichOneof("result") == "success", outcome.failure
    return int(outcome.success.results[0].i32)


def test_a_wat_guest_resolves_a_registered_kernel_and_launches_it(
    registry_stack: RunningStack,
) -> None:
    with _client(registry_stack, ADMIN, "ta") as admin:
        admin.publish_kernel(signed_manifest(KEY, "vector_add.f32", "1.0.0", 80, PTX), PTX.decode())
    with _client(registry_stack, TENANT_B, "tb") as guest_owner:
        guest_owner.create_function("registered-wat", bytes(wasmtime.wat2wasm(WAT_GUEST)))
        found = [Value(i32=v) for v in (0, 14, 32, 5)]
        assert _guest_result(guest_owner, "registered-wat", "run", found) == 0
        unknown = [Value(i32=v) for v in (0, 14, 48, 5)]
        assert _guest_result(guest_owner, "registered-wat", "run", unknown) == -3
        empty_name = [Value(i32=v) for v in (0, 0, 32, 5)]
        assert _guest_result(guest_owner, "registered-wat", "run", empty_name) == -9
        outside = [Value(i32=v) for v in (65530, 14, 32, 5)]
        assert _guest_result(guest_owner, "registered-wat", "run", outside) == -2


def test_a_c_guest_resolves_a_registered_kernel_through_the_cli(
    registry_stack: RunningStack, key_file: Path, tmp_path: Path
) -> None:
    clang = find_clang()
    if clang is None:
        pytest.skip(NO_CLANG)
    module = load_builder().build_c(C_GUEST, tmp_path, clang)
    with _client(registry_stack, ADMIN, "ta") as admin:
        try:  # the WAT test may have published it already
            admin.publish_kernel(
                signed_manifest(KEY, "vector_add.f32", "1.0.0", 80, PTX), PTX.decode()
            )
        except TensorWasmError as exc:
            assert exc.reason == "KERNEL_ALREADY_EXISTS"
    deployed = _cli(registry_stack, TENANT_A, "ta", "deploy", str(module), "--name", "reg-c")
    assert deployed.returncode == 0, deployed.stderr
    invoked = _cli(registry_stack, TENANT_A, "ta", "invoke", "reg-c", "--export", "run")
    assert (invoked.returncode, invoked.stdout) == (0, "[0]\n"), invoked.stderr
    missing = _cli(registry_stack, TENANT_A, "ta", "invoke", "reg-c", "--export", "missing")
    assert missing.stdout == "[-3]\n", missing.stderr
    assert "no registered kernel vector_add.f32@9.9.9" in missing.stderr


def _http(
    stack: RunningStack, method: str, path: str, token: str, tenant: str, body: object = None
) -> tuple[int, Any]:
    host, port = stack.services["gateway"].http_address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    payload = b"" if body is None else json.dumps(body).encode()
    headers = {"x-tensorwasm-tenant": tenant}
    if token:
        headers["authorization"] = f"Bearer {token}"
    try:
        connection.request(method, path, body=payload, headers=headers)
        reply = connection.getresponse()
        return reply.status, json.loads(reply.read())
    finally:
        connection.close()


def _http_manifest(name: str, version: str, key: bytes = KEY) -> dict[str, Any]:
    digest = blake3.blake3(PTX).digest()
    return {
        "name": name,
        "version": version,
        "sm_version": 80,
        "digest": list(digest),  # the original's form: 32 byte values
        "signature": sign(key, name, version, 80, digest).hex(),  # or hex
    }


def test_http_routes_and_their_error_kinds(registry_stack: RunningStack) -> None:
    stack = registry_stack
    body = {"manifest": _http_manifest("http.vadd", "0.1.0"), "ptx_text": PTX.decode()}
    status, reply = _http(stack, "POST", "/kernels", TENANT_A, "ta", body)
    assert (status, reply["error"]["kind"]) == (403, "kernel_publish_scope_required")
    status, reply = _http(stack, "POST", "/kernels", PUBLISHER, "ta", body)
    assert (status, reply) == (201, {"name": "http.vadd", "version": "0.1.0"})
    status, reply = _http(stack, "POST", "/kernels", PUBLISHER, "ta", body)
    assert (status, reply["error"]["kind"]) == (409, "already_registered")

    status, reply = _http(stack, "GET", "/kernels/http.vadd/0.1.0", TENANT_B, "tb")
    assert status == 200 and reply["ptx_text"] == PTX.decode()
    assert reply["manifest"]["digest"] == list(blake3.blake3(PTX).digest())
    status, reply = _http(stack, "GET", "/kernels?offset=0&limit=1000", TENANT_B, "tb")
    assert status == 200 and (reply["offset"], reply["limit"]) == (0, 1000)
    assert "http.vadd" in {m["name"] for m in reply["manifests"]}
    assert all("ptx_text" not in m for m in reply["manifests"])
    status, reply = _http(stack, "GET", "/kernels?limit=5000", TENANT_B, "tb")
    assert status == 200 and reply["limit"] == 1000

    tampered = {**body, "manifest": _http_manifest("http.vadd", "0.2.0", key=OTHER_KEY)}
    status, reply = _http(stack, "POST", "/kernels", PUBLISHER, "ta", tampered)
    assert (status, reply["error"]["kind"]) == (403, "bad_signature")
    mismatch = {**body, "ptx_text": PTX.decode() + "\n"}
    status, reply = _http(stack, "POST", "/kernels", PUBLISHER, "ta", mismatch)
    assert (status, reply["error"]["kind"]) == (400, "digest_mismatch")
    status, reply = _http(stack, "GET", "/kernels/http.vadd/0.2.0", TENANT_B, "tb")
    assert (status, reply["error"]["kind"]) == (404, "not_found")


def test_an_unconfigured_registry_refuses_publishes(stack: RunningStack, tenant: str) -> None:
    """The shared stack's gateway has no kernel key (dev mode: every caller is admin)."""
    with stack.client(tenant) as client:
        error = _error(
            lambda: client.publish_kernel(
                signed_manifest(KEY, "nokey", "1.0.0", 80, PTX), PTX.decode()
            )
        )
        assert (error.code, error.reason) == (
            "FAILED_PRECONDITION",
            "KERNEL_REGISTRY_NOT_CONFIGURED",
        )
        assert list(client.list_kernels()) == []
    body = {"manifest": _http_manifest("nokey", "1.0.0"), "ptx_text": PTX.decode()}
    status, reply = _http(stack, "POST", "/kernels", "", tenant, body)
    assert (status, reply["error"]["kind"]) == (503, "kernel_registry_not_configured")


@pytest.mark.engines
def test_two_gateways_on_postgresql_share_the_registry(
    launch_stack: Any, postgres_url: str, tmp_path: Path
) -> None:
    """Manifests in PostgreSQL: what one gateway publishes the other serves, and a second
    publish of the name@version through the other is ALREADY_EXISTS."""
    key_path = tmp_path / "kernel.key"
    key_path.write_text(KEY.hex())
    env = {
        "TENSORWASM_GATEWAY_DATABASE_URL": postgres_url,
        "TENSORWASM_GATEWAY_KERNEL_HMAC_KEY_FILE": str(key_path),
    }
    stack = launch_stack(tmp_path / "stack", env)
    second = SecondGateway(
        stack,
        "gateway-b",
        {**env, "TENSORWASM_GATEWAY_SERVICE_TOKEN_FILE": str(stack.launcher.service_token_path)},
    )
    second.start()
    try:
        with stack.client("ta") as first:
            first.publish_kernel(signed_manifest(KEY, "pg.vadd", "1.0.0", 80, PTX), PTX.decode())
        with GatewayClient(second.address, tenant="tb") as other:
            assert other.get_kernel("pg.vadd", "1.0.0").ptx_text.encode() == PTX
            duplicate = _error(
                lambda: other.publish_kernel(
                    signed_manifest(KEY, "pg.vadd", "1.0.0", 80, PTX), PTX.decode()
                )
            )
            assert duplicate.reason == "KERNEL_ALREADY_EXISTS"
            assert [m.name for m in other.list_kernels()] == ["pg.vadd"]
    finally:
        second.stop()
