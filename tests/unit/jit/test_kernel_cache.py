"""Tests of the kernel LRU: hit flags, counters, eviction order and thread safety."""

from __future__ import annotations

import threading

import pytest
from tensorwasm_jit.errors import UnknownOpError
from tensorwasm_jit.kernel_cache import KernelCache
from tensorwasm_jit.ptx import SUPPORTED_TARGETS, KernelSpec, cache_key


def _spec(target: str = "sm_80", dtype: str = "f32") -> KernelSpec:
    return KernelSpec("vector_add", {}, dtype, target)


def test_miss_then_hit() -> None:
    cache = KernelCache()
    first, hit = cache.get_or_emit(_spec())
    assert hit is False
    second, hit = cache.get_or_emit(_spec())
    assert hit is True
    assert second is first
    assert (cache.hits, cache.misses, cache.evictions) == (1, 1, 0)
    assert len(cache) == 1
    assert first.cache_key in cache


def test_lru_evicts_least_recently_used() -> None:
    cache = KernelCache(max_entries=2)
    a, b, c = _spec("sm_75"), _spec("sm_80"), _spec("sm_90")
    cache.get_or_emit(a)
    cache.get_or_emit(b)
    cache.get_or_emit(a)  # a is now the most recently used
    cache.get_or_emit(c)  # evicts b
    assert cache.evictions == 1
    assert len(cache) == 2
    assert cache_key(a) in cache
    assert cache_key(b) not in cache
    assert cache_key(c) in cache
    _, hit = cache.get_or_emit(b)
    assert hit is False
    assert cache.evictions == 2
    assert cache_key(a) not in cache
    assert (cache.hits, cache.misses) == (1, 4)


def test_eviction_counter_over_many_entries() -> None:
    cache = KernelCache(max_entries=3)
    specs = [_spec(t, d) for t in SUPPORTED_TARGETS for d in ("f32", "f16")]
    for spec in specs:
        cache.get_or_emit(spec)
    assert len(cache) == 3
    assert cache.evictions == len(specs) - 3
    assert cache.misses == len(specs)


def test_failed_emit_is_not_counted_or_cached() -> None:
    cache = KernelCache()
    with pytest.raises(UnknownOpError):
        cache.get_or_emit(KernelSpec("nope", {}, "f32", "sm_80"))
    assert (cache.hits, cache.misses, len(cache)) == (0, 0, 0)


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        KernelCache(max_entries=0)


def test_concurrent_lookups_agree() -> None:
    cache = KernelCache(max_entries=4)
    specs = [_spec(t) for t in SUPPORTED_TARGETS]
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        try:
            barrier.wait()
            for _ in range(50):
                for spec in specs:
                    kernel, _ = cache.get_or_emit(spec)
                    assert kernel.cache_key == cache_key(spec)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(cache) == 4
    assert cache.hits + cache.misses == 8 * 50 * len(specs)
    assert cache.misses - cache.evictions >= len(cache)
