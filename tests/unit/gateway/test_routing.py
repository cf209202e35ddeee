"""Unit tests for tensorwasm_gateway.routing: rendezvous ordering of executor replicas."""

from __future__ import annotations

from collections import Counter

import blake3
import pytest
from tensorwasm_gateway.routing import rendezvous_order

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
