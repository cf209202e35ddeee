"""Client channels between services: traced, size-capped, with deadlines and tenant metadata."""

from __future__ import annotations

import grpc
from tensorwasm.common.v1.service_token import token_metadata

from tensorwasm_common.rpc_tracing import TracedChannel

TENANT_METADATA_KEY = "x-tensorwasm-tenant"
# The gateway's id of a call, sent on to the executor (and back to the caller).
REQUEST_ID_KEY = "x-request-id"


def open_channel(
    address: str, *, max_message_bytes: int = 64 << 20, service_token: str | None = None
) -> grpc.aio.Channel:
    """An insecure (loopback or mesh-mTLS) channel that propagates W3C traceparent and,
    given one, sends the fleet's service token on every call."""
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 1),
    ]
    return TracedChannel(
        grpc.aio.insecure_channel(address, options=options),
        extra_metadata=token_metadata(service_token),
    )


async def peer_serving(channel: grpc.aio.Channel, *, timeout_seconds: float = 2.0) -> bool:
    """True when the peer's `grpc.health.v1` answers SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=timeout_seconds
        )
    except grpc.aio.AioRpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
