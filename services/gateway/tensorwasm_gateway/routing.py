"""Rendezvous (highest-random-weight) ordering of executor replicas by module digest."""

from __future__ import annotations

from collections.abc import Sequence

import blake3


def rendezvous_order(key: str, replicas: Sequence[str]) -> list[str]:
    """Replicas ordered by preference for `key`: the same key always prefers the same
    replica (warm caches), and removing a replica only moves the keys it owned."""
    return sorted(
        replicas,
        key=lambda replica: blake3.blake3(f"{replica}\x00{key}".encode()).digest(),
        reverse=True,
    )
