"""Where the executor replicas are: a DNS name whose addresses are re-resolved periodically."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from tensorwasm_common.settings import split_address

Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (A and AAAA), as sorted `ip:port` strings."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    addresses = set()
    for family, _, _, _, sockaddr in infos:
        ip = str(sockaddr[0])
        addresses.add(f"[{ip}]:{port}" if family == socket.AF_INET6 else f"{ip}:{port}")
    return sorted(addresses)


class ReplicaSource:
    """The replicas behind a DNS name (e.g. a Kubernetes headless service), one per
    address it resolves to, re-resolved every `interval_seconds`."""

    def __init__(
        self, name: str, *, interval_seconds: float, resolver: Resolver = resolve_host
    ) -> None:
        self.host, self.port = split_address(name)
        self.interval_seconds = interval_seconds
        self._resolver = resolver

    async def resolve(self) -> list[str]:
        """The current addresses; OSError when the name does not resolve."""
        return await self._resolver(self.host, self.port)
