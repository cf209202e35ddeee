"""What the blocking and the asyncio clients share: connection options, metadata, requests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf import duration_pb2
from tensorwasm.common.v1 import invocation_pb2, values_pb2
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb

DEFAULT_GATEWAY = "localhost:50051"
TENANT_METADATA_KEY = "x-tensorwasm-tenant"
AUTHORIZATION_KEY = "authorization"
# Room for the gateway's largest module (256 MiB at most) and a margin for the message.
MAX_MESSAGE_BYTES = 257 << 20


@dataclass(frozen=True)
class TlsOptions:
    """TLS to the gateway: the CA to check its certificate against (None: the system's
    roots) and, for mTLS, the client certificate and key."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("--cert and --key: give both or neither")

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials (files read now).

        Raises:
            OSError: a file cannot be read.
        """
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca_file.read_bytes() if self.ca_file else None,
            private_key=self.key_file.read_bytes() if self.key_file else None,
            certificate_chain=self.cert_file.read_bytes() if self.cert_file else None,
        )


@dataclass(frozen=True)
class Connection:
    """Where the gateway is and as whom to call it.

    Attributes:
        address: `host:port` of the gateway's gRPC face.
        tenant: sent as `x-tensorwasm-tenant`; None lets the gateway choose (the token's
            only tenant, else `default`).
        token: sent as `authorization: Bearer <token>`.
        tls: connect with TLS (mTLS with a client certificate); None: plaintext.
    """

    address: str = DEFAULT_GATEWAY
    tenant: str | None = None
    token: str | None = None
    tls: TlsOptions | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The metadata every call carries."""
        entries: list[tuple[str, str]] = []
        if self.tenant:
            entries.append((TENANT_METADATA_KEY, self.tenant))
        if self.token:
            entries.append((AUTHORIZATION_KEY, f"Bearer {self.token}"))
        return tuple(entries)

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials, or None for a plaintext channel."""
        return self.tls.credentials() if self.tls is not None else None

    def channel_options(self) -> list[tuple[str, int]]:
        """Channel options: messages as large as the largest module."""
        return [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]


def invoke_request(
    function_id: str,
    export: str,
    args: Sequence[values_pb2.Value],
    *,
    stdin: bytes,
    timeout_seconds: float,
    fuel: int,
    max_memory_bytes: int,
    guest_input: bytes = b"",
) -> pb.InvokeRequest:
    """An InvokeRequest (also the body of StartInvocation and InvokeStream); `guest_input`
    is staged for the guest's `wasi:tensor` input channel."""
    limits = invocation_limits(timeout_seconds, fuel, max_memory_bytes)
    return pb.InvokeRequest(
        name=function_name(function_id),
        export_name=export,
        args=args,
        stdin=stdin,
        limits=limits,
        input=guest_input,
    )


def create_instance_request(
    function_id: str,
    *,
    stdin: bytes,
    timeout_seconds: float,
    max_memory_bytes: int,
    idle_ttl_seconds: float,
    guest_input: bytes = b"",
) -> pb.CreateInstanceRequest:
    """A CreateInstanceRequest; an idle TTL of 0 takes the gateway's default; `guest_input`
    is the instance's `wasi:tensor` input (for calls staging none)."""
    request = pb.CreateInstanceRequest(
        function=function_name(function_id),
        stdin=stdin,
        input=guest_input,
        limits=invocation_limits(timeout_seconds, 0, max_memory_bytes),
    )
    if idle_ttl_seconds > 0:
        request.idle_ttl.FromNanoseconds(round(idle_ttl_seconds * 1e9))
    return request


def invocation_limits(
    timeout_seconds: float, fuel: int, max_memory_bytes: int
) -> invocation_pb2.InvocationLimits:
    """Wire limits; zero fields mean "the default"."""
    limits = invocation_pb2.InvocationLimits(fuel=fuel, max_memory_bytes=max_memory_bytes)
    if timeout_seconds > 0:
        seconds, nanos = int(timeout_seconds), int(timeout_seconds % 1 * 1e9)
        limits.timeout.CopyFrom(duration_pb2.Duration(seconds=seconds, nanos=nanos))
    return limits


def rpc_timeout(timeout_seconds: float) -> float:
    """The RPC deadline for a guest deadline: room for the guest and the hops."""
    return max(timeout_seconds, 10.0) + 30.0


def function_name(function_id: str) -> str:
    """`functions/{id}` for a bare id or a resource name."""
    return function_id if function_id.startswith("functions/") else f"functions/{function_id}"


def invocation_name(invocation: str) -> str:
    """`invocations/{id}` for a bare id or a resource name."""
    return invocation if invocation.startswith("invocations/") else f"invocations/{invocation}"


def instance_name(instance: str) -> str:
    """`instances/{id}` for a bare id or a resource name."""
    return instance if instance.startswith("instances/") else f"instances/{instance}"


def snapshot_name(snapshot: str) -> str:
    """`snapshots/{id}` for a bare id or a resource name."""
    return snapshot if snapshot.startswith("snapshots/") else f"snapshots/{snapshot}"


FINISHED_STATES = (pb.INVOCATION_STATE_SUCCEEDED, pb.INVOCATION_STATE_FAILED)

# Calls that change nothing: retried after an UNAVAILABLE that carries a RetryInfo.
_READS = frozenset(
    {
        "GetFunction",
        "ListFunctions",
        "GetInvocation",
        "ListInvocations",
        "GetInstance",
        "GetKernel",
        "ListKernels",
    }
)


def idempotent(method: str, request: object) -> bool:
    """True when making the call twice does what making it once does: the reads, and a
    StartInvocation with a request id (the gateway returns the same invocation)."""
    if method == "StartInvocation":
        return bool(getattr(request, "request_id", ""))
    return method in _READS
