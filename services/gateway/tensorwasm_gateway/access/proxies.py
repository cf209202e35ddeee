"""The proxies whose `x-forwarded-for` the gateway believes: configured addresses only."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """Addresses and CIDR blocks (TENSORWASM_GATEWAY_TRUSTED_PROXIES) of the proxies that
    may name the client of a call; any other peer is its own client, whatever it sends."""

    def __init__(self, specs: Iterable[str] = ()) -> None:
        """Parses `specs` (`10.0.0.7`, `10.0.0.0/8`, `::1`).

        Raises:
            ValueError: a spec is no IP address or network.
        """
        self._networks: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(spec.strip(), strict=False) for spec in specs
        )
        # Asked once per audited call, of a handful of peer hosts.
        self.trusts = functools.lru_cache(maxsize=1024)(self._trusts)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def _trusts(self, host: str) -> bool:
        """True when `host` (an IP, brackets allowed) is in a trusted network."""
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False
        return any(address in network for network in self._networks)


NO_PROXIES = TrustedProxies()
