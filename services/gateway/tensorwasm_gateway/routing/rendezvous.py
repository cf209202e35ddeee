"""Which executor replica runs a call: rendezvous (HRW) order, bounded load, health.

Pure functions over a snapshot of the replicas; `executors.ExecutorPool` feeds them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import blake3


def rendezvous_order(key: str, replicas: Sequence[str]) -> list[str]:
    """Replicas ordered by preference for `key`: the same key always prefers the same
    replica (warm caches), and removing a replica only moves the keys it owned."""
    return list(_rendezvous_order(key, tuple(replicas)))


@functools.lru_cache(maxsize=4096)
def _rendezvous_order(key: str, replicas: tuple[str, ...]) -> tuple[str, ...]:
    """`rendezvous_order`, memoised: a hot module's order is hashed once, not per call."""
    if len(replicas) == 1:
        return replicas
    return tuple(
        sorted(
            replicas,
            key=lambda replica: blake3.blake3(f"{replica}\x00{key}".encode()).digest(),
            reverse=True,
        )
    )


@dataclass(frozen=True)
class ReplicaView:
    """What routing needs to know of one replica at the moment of a call."""

    address: str
    in_flight: int
    healthy: bool


def load_bound(total_in_flight: int, replicas: int, load_factor: float) -> int:
    """The most calls one replica may hold, the new one included, under bounded-load
    consistent hashing: ceil(load_factor x the average load after admitting one more).
    With load_factor >= 1 the bound is at least 1, so an idle fleet always admits."""
    if replicas <= 0:
        return 0
    return max(1, math.ceil(load_factor * (total_in_flight + 1) / replicas))


def route(key: str, replicas: Sequence[ReplicaView], *, load_factor: float) -> list[str]:
    """The replicas to try for `key`, best first.

    Healthy replicas within the load bound come first, in rendezvous order (so a key
    sticks to one replica while the fleet is balanced); then healthy replicas over the
    bound, in rendezvous order (so a hot key spills to its next choice, not to random
    ones); then unhealthy replicas, a last resort for when nothing healthy is left.
    """
    order = rendezvous_order(key, [r.address for r in replicas])
    by_address = {r.address: r for r in replicas}
    healthy = [by_address[a] for a in order if by_address[a].healthy]
    bound = load_bound(sum(r.in_flight for r in healthy), len(healthy), load_factor)
    within = [r.address for r in healthy if r.in_flight + 1 <= bound]
    over = [r.address for r in healthy if r.in_flight + 1 > bound]
    down = [a for a in order if not by_address[a].healthy]
    return within + over + down
