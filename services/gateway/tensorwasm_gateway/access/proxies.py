"""The proxies whose `x-forwarded-for` the gateway believes: configured addresses, and the
gateway's own HTTP face, which proves itself with a secret of this process."""

from __future__ import annotations

import functools
import hmac
import ipaddress
from collections.abc import Iterable
from typing import Any

# The metadata key the in-process HTTP face sends its per-process secret under.
FACE_PROOF_KEY = "x-tensorwasm-face-proof"

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """Addresses and CIDR blocks (TENSORWASM_GATEWAY_TRUSTED_PROXIES) of the proxies that
    may name the client of a call; any other peer is its own client, whatever it sends."""

    def __init__(self, specs: Iterable[str] = (), *, face_secret: str = "") -> None:
        """Parses `specs` (`10.0.0.7`, `10.0.0.0/8`, `::1`); a call carrying `face_secret`
        under FACE_PROOF_KEY comes from this gateway's own HTTP face (the secret never
        leaves the process), which is trusted too.

        Raises:
            ValueError: a spec is no IP address or network.
        """
        self._face_secret = face_secret.encode()
        self._networks: tuple[_Network, ...] = tuple(
            ipaddress.ip_network(spec.strip(), strict=False) for spec in specs
        )
        # Asked once per audited call, of a handful of peer hosts.
        self.trusts = functools.lru_cache(maxsize=1024)(self._trusts)

    def __bool__(self) -> bool:
        return bool(self._networks) or bool(self._face_secret)

    def forwards(self, host: str, metadata: Any) -> bool:
        """True when the call from `host` with `metadata` comes from a trusted proxy."""
        if self._face_secret:
            for key, value in metadata or ():
                if key == FACE_PROOF_KEY and hmac.compare_digest(
                    str(value).encode(), self._face_secret
                ):
                    return True
        return bool(self._networks) and self.trusts(host)

    def _trusts(self, host: str) -> bool:
        """True when `host` (an IP, brackets allowed) is in a trusted network."""
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False
        return any(address in network for network in self._networks)


NO_PROXIES = TrustedProxies()
