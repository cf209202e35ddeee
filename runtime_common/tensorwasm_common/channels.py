"""Client channels between services: traced, size-capped, with deadlines and tenant metadata.

Every internal channel (these and the executor's and dispatcher's blocking ones) reconnects
with a bounded backoff (`RECONNECT_OPTIONS`): grpc's default grows to 120 s, so after a
long outage a dependency that is back could stay unused for minutes, every call in the
meantime failing fast. Calls do not set `wait_for_ready`: a call during an outage fails at
once (UNAVAILABLE) instead of holding its caller until its deadline; the gateway fails
over to another executor only on such a fast failure, and a guest's GPU call answers -1.
With the backoff bounded, the window after a restart in which calls still fail is at most
about `MAX_RECONNECT_BACKOFF_MS`.
"""

from __future__ import annotations

import grpc
from tensorwasm.common.v1.service_token import token_metadata

from tensorwasm_common.rpc_tracing import TracedChannel
from tensorwasm_common.tls import ClientTls

TENANT_METADATA_KEY = "x-tensorwasm-tenant"
# The gateway's id of a call, sent on to the executor (and back to the caller).
REQUEST_ID_KEY = "x-request-id"
# The longest wait between two connection attempts to a peer that is down.
MAX_RECONNECT_BACKOFF_MS = 1000
RECONNECT_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    # the shortest time one connection attempt is given (grpc's name for it)
    ("grpc.min_reconnect_backoff_ms", 5000),
)


def channel_options(max_message_bytes: int | None = None) -> list[tuple[str, int]]:
    """Options of an internal channel: bounded reconnect backoff, and the message caps."""
    options = list(RECONNECT_OPTIONS)
    if max_message_bytes is not None:
        options += [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
    return options


def open_channel(
    address: str,
    *,
    max_message_bytes: int = 64 << 20,
    service_token: str | None = None,
    tls: ClientTls | None = None,
    target_name: str = "",
    balanced: bool = False,
) -> grpc.aio.Channel:
    """A channel that propagates W3C traceparent and, given one, sends the fleet's service
    token on every call: TLS (mTLS with a client certificate) with `tls`, else plaintext
    (loopback, or a mesh's mTLS around it). `target_name` overrides the name the peer's
    certificate is checked against (default: the address's host).

    `balanced`: for a stateless peer with several replicas behind one target (a DNS name
    with several addresses, as a headless Service gives, or `ipv4:A,B`): calls go round
    robin over every replica that is up, and one that is down is left out until it is
    back. Without it the channel keeps to the first address that answers (right for a
    peer that holds per-client state, as the dispatcher does with GPU sessions)."""
    options: list[tuple[str, int | str]] = [
        *channel_options(max_message_bytes),
        ("grpc.enable_retries", 1),
    ]
    if balanced:
        options.append(("grpc.lb_policy_name", "round_robin"))
    if tls is None:
        channel = grpc.aio.insecure_channel(address, options=options)
    else:
        if target_name:
            options.append(("grpc.ssl_target_name_override", target_name))
        channel = grpc.aio.secure_channel(address, tls.channel_credentials(), options=options)
    return TracedChannel(channel, extra_metadata=token_metadata(service_token))


def open_blocking_channel(
    address: str, tls: ClientTls | None, options: list[tuple[str, int]]
) -> grpc.Channel:
    """A blocking channel to an internal service: TLS with `tls`, else plaintext."""
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, tls.channel_credentials(), options=options)


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
