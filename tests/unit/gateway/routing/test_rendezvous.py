"""Unit tests for tensorwasm_gateway.routing.rendezvous: the HRW order of executor replicas."""

from __future__ import annotations

from collections import Counter

import blake3
import pytest
from tensorwasm_gateway.routing.rendezvous import ReplicaView, load_bound, rendezvous_order, route

REPLICAS = ["10.0.0.1:50052", "10.0.0.2:50052", "10.0.0.3:50052", "10.0.0.4:50052"]
KEYS = [blake3.blake3(f"module-{i}".encode()).hexdigest() for i in range(1000)]


def test_empty_and_single_replica() -> None:
    assert rendezvous_order(KEYS[0], []) == []
    assert rendezvous_order(KEYS[0], ["only:1"]) == ["only:1"]


def test_order_is_a_permutation_of_the_replicas() -> None:
    for key in KEYS[:100]:
        order = rendezvous_order(key, REPLICAS)
        assert len(order) == len(REPLICAS)
        assert sorted(order) == sorted(REPLICAS)


def test_order_is_deterministic_and_independent_of_input_order() -> None:
    for key in KEYS[:100]:
        order = rendezvous_order(key, REPLICAS)
        assert rendezvous_order(key, REPLICAS) == order
        assert rendezvous_order(key, list(reversed(REPLICAS))) == order
        assert rendezvous_order(key, tuple(REPLICAS[2:] + REPLICAS[:2])) == order


def test_input_sequence_is_not_modified() -> None:
    replicas = list(REPLICAS)
    rendezvous_order(KEYS[0], replicas)
    assert replicas == REPLICAS


def test_different_keys_prefer_different_replicas() -> None:
    owners = {rendezvous_order(key, REPLICAS)[0] for key in KEYS[:200]}
    assert owners == set(REPLICAS)


@pytest.mark.parametrize("removed", REPLICAS)
def test_removing_a_replica_only_moves_the_keys_it_owned(removed: str) -> None:
    remaining = [r for r in REPLICAS if r != removed]
    moved = 0
    for key in KEYS:
        before = rendezvous_order(key, REPLICAS)
        after = rendezvous_order(key, remaining)
        # The relative order of the remaining replicas never changes.
        assert after == [r for r in before if r != removed]
        if before[0] == removed:
            moved += 1
            assert after[0] == before[1]  # its keys go to their second choice
        else:
            assert after[0] == before[0]  # every other key stays where it was
    assert 0 < moved < len(KEYS)


def test_adding_a_replica_only_moves_keys_to_the_new_one() -> None:
    grown = [*REPLICAS, "10.0.0.5:50052"]
    for key in KEYS:
        before = rendezvous_order(key, REPLICAS)[0]
        after = rendezvous_order(key, grown)[0]
        assert after in (before, "10.0.0.5:50052")


def test_keys_spread_roughly_evenly_over_three_replicas() -> None:
    replicas = REPLICAS[:3]
    owners = Counter(rendezvous_order(key, replicas)[0] for key in KEYS)
    assert set(owners) == set(replicas)
    for replica in replicas:
        share = owners[replica] / len(KEYS)
        assert 0.20 <= share <= 0.47, (replica, share)


# --- route: health and bounded load -------------------------------------------------


def views(loads: dict[str, int], down: frozenset[str] = frozenset()) -> list[ReplicaView]:
    return [ReplicaView(a, n, a not in down) for a, n in loads.items()]


def test_idle_fleet_routes_by_rendezvous_order() -> None:
    idle = views(dict.fromkeys(REPLICAS, 0))
    for key in KEYS[:100]:
        assert route(key, idle, load_factor=1.25) == rendezvous_order(key, REPLICAS)


def test_load_bound_is_the_ceiling_of_factor_times_average_after_admission() -> None:
    assert load_bound(0, 4, 1.25) == 1  # an idle fleet always admits
    assert load_bound(7, 4, 1.0) == 2  # (7 + 1) / 4
    assert load_bound(8, 4, 1.25) == 3  # ceil(1.25 * 9 / 4) = ceil(2.8125)
    assert load_bound(100, 4, 1.5) == 38  # ceil(1.5 * 101 / 4) = ceil(37.875)
    assert load_bound(5, 0, 1.25) == 0


def test_replica_over_the_bound_moves_after_those_within_it() -> None:
    key = KEYS[0]
    preferred, *others = rendezvous_order(key, REPLICAS)
    loads = dict.fromkeys(REPLICAS, 1)
    loads[preferred] = 5  # total 8, bound ceil(1.25 * 9 / 4) = 3
    order = route(key, views(loads), load_factor=1.25)
    assert order == [*others, preferred]


def test_replica_at_the_bound_minus_one_keeps_its_keys() -> None:
    key = KEYS[1]
    preferred = rendezvous_order(key, REPLICAS)[0]
    loads = dict.fromkeys(REPLICAS, 1)
    loads[preferred] = 2  # total 5, bound ceil(1.25 * 6 / 4) = 2: 2 + 1 > 2, over
    assert route(key, views(loads), load_factor=1.25)[0] != preferred
    loads[preferred] = 1  # total 4, bound ceil(1.25 * 5 / 4) = 2: 1 + 1 <= 2, within
    assert route(key, views(loads), load_factor=1.25)[0] == preferred


def test_unhealthy_replicas_come_last_in_rendezvous_order() -> None:
    key = KEYS[2]
    order = rendezvous_order(key, REPLICAS)
    down = frozenset(order[:2])
    routed = route(key, views(dict.fromkeys(REPLICAS, 0), down), load_factor=1.25)
    assert routed == [*order[2:], *order[:2]]


def test_all_unhealthy_still_gives_every_replica_as_a_last_resort() -> None:
    key = KEYS[3]
    down = frozenset(REPLICAS)
    routed = route(key, views(dict.fromkeys(REPLICAS, 3), down), load_factor=1.25)
    assert routed == rendezvous_order(key, REPLICAS)


def test_bounded_load_keeps_every_replica_within_the_bound_under_a_hot_key() -> None:
    """Admitting calls of one hot key one by one (none finishing) spreads them so that
    no replica ever holds more than the bound computed at admission."""
    loads = dict.fromkeys(REPLICAS, 0)
    for _ in range(200):
        total = sum(loads.values())
        chosen = route(KEYS[4], views(loads), load_factor=1.25)[0]
        assert loads[chosen] + 1 <= load_bound(total, len(REPLICAS), 1.25)
        loads[chosen] += 1
    assert max(loads.values()) <= load_bound(199, len(REPLICAS), 1.25)
    assert min(loads.values()) > 0


def test_balanced_load_keeps_keys_on_their_preferred_replica() -> None:
    """With many keys and equal loads, every key goes to its rendezvous choice."""
    loads = dict.fromkeys(REPLICAS, 10)
    for key in KEYS[:200]:
        assert route(key, views(loads), load_factor=1.25)[0] == rendezvous_order(key, REPLICAS)[0]
