"""ArgvCache on its own: reads and parses a launch's argv, remembers it within its bound,
never remembers device buffer records, and keeps the ABI's codes."""

from __future__ import annotations

import struct

import pytest
from tensorwasm_common.gpu_abi import MAX_ARGV_BYTES, AbiError, AbiFailure
from tensorwasm_executor.gpu.abi import DeviceBufferRecord, PointerRecord
from tensorwasm_executor.gpu.argv import ArgvCache


class Memory:
    """Linear memory as a bytearray."""

    def __init__(self, size: int = 65536) -> None:
        self.data = bytearray(size)

    def size(self) -> int:
        return len(self.data)

    def read(self, start: int, length: int) -> bytes:
        return bytes(self.data[start : start + length])

    def write(self, start: int, data: bytes) -> None:
        self.data[start : start + len(data)] = data


def pointer_argv(memory: Memory, at: int, pointer: int) -> int:
    data = b"\x07" + struct.pack("<II", pointer, 256)
    memory.data[at : at + len(data)] = data
    return len(data)


def test_the_same_argv_is_parsed_once_and_the_cache_is_bounded() -> None:
    memory, cache = Memory(), ArgvCache(max_entries=2)
    length = pointer_argv(memory, 0, 1024)
    first = cache.read(memory, 0, length, {})
    assert first == (PointerRecord(1024, 256),)
    assert cache.read(memory, 0, length, {}) is first  # the cached tuple itself
    for pointer in (2048, 4096):
        pointer_argv(memory, 0, pointer)
        cache.read(memory, 0, length, {})
    assert len(cache) == 2  # the oldest (1024) went
    pointer_argv(memory, 0, 1024)
    again = cache.read(memory, 0, length, {})
    assert again == first and again is not first


def test_device_buffer_records_are_not_remembered() -> None:
    memory, cache = Memory(), ArgvCache()
    memory.data[0:9] = b"\x08" + struct.pack("<II", 3, 64)
    assert cache.read(memory, 0, 9, {3: 256}) == (DeviceBufferRecord(3, 64, 192),)
    assert len(cache) == 0
    with pytest.raises(AbiFailure) as caught:  # the buffer was freed since
        cache.read(memory, 0, 9, {})
    assert caught.value.code is AbiError.INVALID_ARGS


def test_empty_argv_needs_no_memory_and_bad_ones_keep_their_codes() -> None:
    cache = ArgvCache()
    assert cache.read(None, 0, 0, {}) == ()
    with pytest.raises(AbiFailure) as caught:
        cache.read(None, 0, 9, {})
    assert caught.value.code is AbiError.INVALID_POINTER
    with pytest.raises(AbiFailure) as caught:
        cache.read(Memory(), 0, MAX_ARGV_BYTES + 1, {})
    assert caught.value.code is AbiError.KERNEL_ARGS_UNSUPPORTED
    with pytest.raises(AbiFailure) as caught:
        cache.read(Memory(size=16), 8, 16, {})
    assert caught.value.code is AbiError.INVALID_POINTER
