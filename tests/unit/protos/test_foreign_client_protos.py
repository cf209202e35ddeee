"""What a foreign client needs from protos/ alone: google/rpc vendored, the contract documented."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2, status_pb2
from tensorwasm_common.channels import REQUEST_ID_KEY, TENANT_METADATA_KEY
from tensorwasm_common.tenants import DEFAULT_TENANT
from tensorwasm_gateway.access.guard import AUTHORIZATION_KEY

ROOT = Path(__file__).resolve().parents[3]
PROTOS = ROOT / "protos"
GATEWAY_PROTO = PROTOS / "tensorwasm/gateway/v1/gateway_service.proto"


@pytest.fixture(scope="module")
def descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> descriptor_pb2.FileDescriptorSet:
    """protos/ compiled from itself only (no googleapis on the include path but protoc's
    own well-known types), as a foreign client's protoc would."""
    out = tmp_path_factory.mktemp("descriptors") / "set.binpb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={PROTOS}",
            f"--descriptor_set_out={out}",
            "--include_imports",
            "google/rpc/status.proto",
            "google/rpc/error_details.proto",
            "tensorwasm/gateway/v1/gateway_service.proto",
        ],
        check=True,
        cwd=PROTOS,
    )
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _message(files: descriptor_pb2.FileDescriptorSet, full_name: str) -> list[tuple[str, int]]:
    package, _, name = full_name.rpartition(".")
    for file in files.file:
        if file.package == package:
            for message in file.message_type:
                if message.name == name:
                    return [(field.name, field.number) for field in message.field]
    raise AssertionError(f"{full_name} is not in the compiled protos")


@pytest.mark.parametrize(
    "generated",
    [
        status_pb2.Status,
        error_details_pb2.ErrorInfo,
        error_details_pb2.RetryInfo,
        error_details_pb2.BadRequest,
    ],
)
def test_vendored_google_rpc_matches_the_status_the_services_send(
    descriptor_set: descriptor_pb2.FileDescriptorSet, generated: type
) -> None:
    """The vendored messages are the ones grpcio-status encodes (same fields, same numbers)."""
    descriptor = generated.DESCRIPTOR
    expected = [(field.name, field.number) for field in descriptor.fields]
    assert _message(descriptor_set, descriptor.full_name) == expected


def test_gateway_proto_documents_the_metadata_and_the_tenant_rule() -> None:
    text = GATEWAY_PROTO.read_text()
    service_comment = text[: text.index("service GatewayService")]
    for key in (AUTHORIZATION_KEY, TENANT_METADATA_KEY, REQUEST_ID_KEY):
        assert f"`{key}" in service_comment, key
    assert "Bearer <token>" in service_comment
    assert f"`{DEFAULT_TENANT}`" in service_comment
    assert "scoped to exactly one tenant" in service_comment
    for detail in ("google.rpc.ErrorInfo", "google.rpc.RetryInfo", "grpc-status-details-bin"):
        assert detail in service_comment, detail


@pytest.mark.parametrize("template", ["buf.gen.ts.yaml", "buf.gen.go.yaml"])
def test_generation_templates_name_only_protos_that_exist(template: str) -> None:
    lines = (PROTOS / template).read_text().splitlines()
    paths = [line.strip()[2:] for line in lines if line.strip().startswith("- tensorwasm/")]
    paths += [line.strip()[2:] for line in lines if line.strip().startswith("- google/")]
    assert paths
    for path in paths:
        assert (PROTOS / path).exists(), path
