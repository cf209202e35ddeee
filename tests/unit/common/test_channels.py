"""Internal channels reconnect with a bounded backoff: a peer that comes back after a long
outage is used again within about MAX_RECONNECT_BACKOFF_MS, not grpc's default 120 s."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorwasm_common.channels import MAX_RECONNECT_BACKOFF_MS, channel_options, open_channel

# A generous multiple of the setting: a gap this long means the backoff is not bounded.
GAP_BOUND_SECONDS = 10 * MAX_RECONNECT_BACKOFF_MS / 1000
# Enough attempts that grpc's default backoff (1 s x 1.6^n, +-20%) passes the bound.
ATTEMPTS = 9


class RefusingPeer:
    """A TCP listener that accepts each connection attempt and closes it at once (a peer
    that is down but reachable), recording when each attempt came."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self.attempts: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.attempts.append(time.monotonic())
            connection.close()

    def longest_gap(self) -> float:
        """The longest wait between attempts, counting the one still awaited."""
        stamps = [*self.attempts, time.monotonic()]
        return max(later - earlier for earlier, later in itertools.pairwise(stamps))

    def done(self) -> bool:
        """Enough attempts seen, or a gap already past the bound."""
        return len(self.attempts) >= ATTEMPTS or (
            bool(self.attempts) and self.longest_gap() > GAP_BOUND_SECONDS
        )

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()


@pytest.fixture
def peer() -> Iterator[RefusingPeer]:
    refusing = RefusingPeer()
    try:
        yield refusing
    finally:
        refusing.close()


def _assert_bounded(peer: RefusingPeer) -> None:
    assert len(peer.attempts) >= ATTEMPTS, peer.attempts
    assert peer.longest_gap() <= GAP_BOUND_SECONDS


def test_an_internal_aio_channel_keeps_retrying_a_peer_that_is_down(peer: RefusingPeer) -> None:
    async def keep_calling() -> None:
        channel = open_channel(f"127.0.0.1:{peer.port}")
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            while not peer.done():  # a client that keeps calling, as traffic does
                try:
                    await stub.Check(health_pb2.HealthCheckRequest(), timeout=0.2)
                except grpc.aio.AioRpcError:
                    await asyncio.sleep(0.05)
        finally:
            await channel.close()

    asyncio.run(keep_calling())
    _assert_bounded(peer)


def test_a_blocking_internal_channel_keeps_retrying_a_peer_that_is_down(
    peer: RefusingPeer,
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{peer.port}", options=channel_options()) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not peer.done():
            try:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=0.2)
            except grpc.RpcError:
                time.sleep(0.05)
    _assert_bounded(peer)
