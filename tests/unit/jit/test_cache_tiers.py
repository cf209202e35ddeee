"""The jit cache's disk tier, byte bounds, eviction metrics, listing and artifacts."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest
from prometheus_client import REGISTRY
from tensorwasm_common.errors import Code, InvalidDigestError, TooLargeError
from tensorwasm_jit.artifacts import ArtifactCache
from tensorwasm_jit.byte_store import ByteStore
from tensorwasm_jit.errors import ArtifactIntegrityError, ArtifactNotFoundError
from tensorwasm_jit.kernel_cache import KernelCache
from tensorwasm_jit.ptx import KernelSpec, cache_key, canonical_spec


def _evictions(tier: str) -> float:
    value = REGISTRY.get_sample_value("tensorwasm_jit_cache_evictions_total", {"tier": tier})
    return value or 0.0


def _matmul(size: int) -> KernelSpec:
    return KernelSpec("matmul", {"m": size, "n": size, "k": size}, "f32", "sm_80")


def test_a_restarted_cache_serves_kernels_from_disk(tmp_path: Path) -> None:
    first = KernelCache(disk=ByteStore(tmp_path, max_bytes=1 << 20, tier="disk"))
    kernel, hit = first.get_or_emit(_matmul(32))
    assert hit is False
    second = KernelCache(disk=ByteStore(tmp_path, max_bytes=1 << 20, tier="disk"))
    again, hit = second.get_or_emit(_matmul(32))
    assert hit is True and again == kernel
    assert (second.hits, second.misses) == (0, 1)  # a disk hit is a memory miss
    _, hit = second.get_or_emit(_matmul(32))
    assert hit is True and second.hits == 1


def test_a_damaged_disk_record_is_dropped_and_emitted_again(tmp_path: Path) -> None:
    cache = KernelCache(disk=ByteStore(tmp_path, max_bytes=1 << 20, tier="disk"))
    kernel, _ = cache.get_or_emit(_matmul(16))
    path = tmp_path / kernel.cache_key
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    fresh = KernelCache(disk=ByteStore(tmp_path, max_bytes=1 << 20, tier="disk"))
    again, hit = fresh.get_or_emit(_matmul(16))
    assert hit is False and again == kernel
    assert blake3.blake3(path.read_bytes()[32:]).digest() == path.read_bytes()[:32]


def test_byte_store_evicts_least_recently_used_and_counts_it(tmp_path: Path) -> None:
    before = _evictions("test-tier")
    store = ByteStore(tmp_path, max_bytes=100, tier="test-tier")
    assert store.put("a", b"x" * 40) and store.put("b", b"y" * 40)
    assert store.get("a") == b"x" * 40  # a is now the most recently used
    assert store.put("c", b"z" * 40)  # 120 > 100: b goes
    assert sorted(store.names()) == ["a", "c"] and store.total_bytes == 80
    assert not (tmp_path / "b").exists()
    assert store.evictions == 1 and _evictions("test-tier") == before + 1
    assert store.put("huge", b"h" * 101) is False  # never fits
    assert store.put("a", b"other") is False  # first write wins
    with pytest.raises(ValueError, match="bad record name"):
        store.put("../escape", b"x")


def test_byte_store_drops_interrupted_writes_when_it_opens(tmp_path: Path) -> None:
    store = ByteStore(tmp_path, max_bytes=100, tier="test-tier")
    assert store.put("kept", b"k" * 10)
    assert [p.name for p in tmp_path.iterdir()] == ["kept"]  # no temp file left behind
    (tmp_path / ".tmp-abc123").write_bytes(b"\0" * 32 + b"half")  # write_atomically's temp
    (tmp_path / "old.1a2b3c4d.part").write_bytes(b"\0" * 32 + b"half")  # an older version's
    reopened = ByteStore(tmp_path, max_bytes=100, tier="test-tier")
    assert reopened.names() == ["kept"] and reopened.total_bytes == 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    assert reopened.get("kept") == b"k" * 10
    for temp_name in (".tmp-x", "y.part"):
        with pytest.raises(ValueError, match="bad record name"):
            reopened.put(temp_name, b"x")


def test_byte_store_in_memory_verifies_too() -> None:
    store = ByteStore(None, max_bytes=10, tier="mem")
    store.put("k", b"12345")
    store._memory["k"] = store._memory["k"][:-1] + b"0"  # damage it
    with pytest.raises(ArtifactIntegrityError) as info:
        store.get("k")
    assert info.value.code is Code.DATA_LOSS and "k" not in store


def test_a_reopened_store_keeps_the_newest_records_that_fit(tmp_path: Path) -> None:
    for age, (name, size) in enumerate([("old", 30), ("huge", 150), ("mid", 40), ("new", 50)]):
        (tmp_path / name).write_bytes(b"\0" * 32 + b"x" * size)
        os.utime(tmp_path / name, ns=(age * 10**9, age * 10**9))  # oldest first
    before = _evictions("reopen")
    store = ByteStore(tmp_path, max_bytes=100, tier="reopen")
    # huge never fits, so it and everything older goes; mid and new fit together.
    assert sorted(store.names()) == ["mid", "new"] and store.total_bytes == 90
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mid", "new"]
    assert store.evictions == 2 and _evictions("reopen") == before + 2


def test_a_kernel_larger_than_the_memory_tier_is_served_not_kept() -> None:
    cache = KernelCache(max_bytes=10)
    kernel, hit = cache.get_or_emit(_matmul(16))
    assert hit is False and kernel.ptx
    assert (len(cache), cache.evictions) == (0, 0)


def test_listing_does_not_change_the_eviction_order(tmp_path: Path) -> None:
    cache = KernelCache(max_entries=2)
    first, _ = cache.get_or_emit(_matmul(16))
    second, _ = cache.get_or_emit(_matmul(32))
    cache.get_or_emit(_matmul(16))  # second is now the least recently used
    cache.list_page("", 10)
    cache.get_or_emit(_matmul(48))
    assert first.cache_key in cache and second.cache_key not in cache


def test_memory_tier_is_bounded_by_bytes() -> None:
    before = _evictions("memory")
    cache = KernelCache(max_entries=100, max_bytes=3 * 4111 + 10)  # three 16-tile matmuls
    for size in (16, 32, 48, 64, 80):
        cache.get_or_emit(_matmul(size))
    assert (cache.evictions, len(cache)) == (2, 3)
    assert _evictions("memory") == before + cache.evictions


def test_list_pages_through_memory_and_disk_in_key_order(tmp_path: Path) -> None:
    cache = KernelCache(max_entries=2, disk=ByteStore(tmp_path, max_bytes=1 << 20, tier="disk"))
    specs = [_matmul(size) for size in (8, 16, 24, 40, 56)]
    for spec in specs:
        cache.get_or_emit(spec)
    keys = sorted(cache_key(canonical_spec(spec)) for spec in specs)
    seen, after = [], ""
    while True:
        page, after = cache.list_page(after, 2)
        seen += [item.kernel.cache_key for item in page]
        if not after:
            break
    assert seen == keys  # 3 evicted from memory, still listed from disk
    assert {item.spec.params_dict["tile"] for item in cache.list_page("", 10)[0]} == {16}


def test_artifacts_round_trip_and_reject_bad_input() -> None:
    artifacts = ArtifactCache(ByteStore(None, max_bytes=1 << 20, tier="a"), max_artifact_bytes=8)
    digest = "ab" * 32
    data_digest, created = artifacts.put(digest, "sm_90", b"cubin")
    assert created and data_digest == blake3.blake3(b"cubin").hexdigest()
    assert artifacts.put(digest, "sm_90", b"cubin")[1] is False
    assert artifacts.get(digest, "sm_90") == (b"cubin", data_digest)
    with pytest.raises(ArtifactNotFoundError) as missing:
        artifacts.get(digest, "sm_80")
    assert missing.value.code is Code.NOT_FOUND and missing.value.reason == "ARTIFACT_NOT_FOUND"
    with pytest.raises(InvalidDigestError):
        artifacts.get("AB" * 32, "sm_90")
    with pytest.raises(TooLargeError):
        artifacts.put(digest, "sm_80", b"123456789")
    with pytest.raises(Exception, match="compute_capability"):
        artifacts.put(digest, "9.0", b"x")


@pytest.mark.parametrize("on_disk", [True, False])
def test_a_replacing_put_overwrites_and_keeps_the_byte_count(tmp_path: Path, on_disk: bool) -> None:
    root = tmp_path if on_disk else None
    store = ByteStore(root, max_bytes=100, tier="replace")
    assert store.put("a", b"x" * 30) and store.put("b", b"y" * 10)
    assert not store.put("a", b"z" * 5)  # kept without replace
    assert (store.get("a"), store.total_bytes) == (b"x" * 30, 40)
    assert store.put("a", b"z" * 5, replace=True)
    assert (store.get("a"), store.total_bytes, len(store)) == (b"z" * 5, 15, 2)
    if on_disk:
        reopened = ByteStore(tmp_path, max_bytes=100, tier="replace")
        assert (reopened.get("a"), reopened.total_bytes) == (b"z" * 5, 15)
