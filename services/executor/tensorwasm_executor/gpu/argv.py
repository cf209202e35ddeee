"""A launch's argv read from guest memory, with a bounded cache of the parsed buffers.

A guest launching in a loop passes the same argv bytes every time: parsing them again
would be most of a launch's cost in the executor, so a session remembers them.
"""

from __future__ import annotations

from cachetools import FIFOCache
from tensorwasm_common.gpu_abi import MAX_ARGV_BYTES, AbiError, AbiFailure

from tensorwasm_executor.gpu.abi import (
    ArgRecord,
    DeviceBufferRecord,
    as_u32,
    check_region,
    parse_argv,
)
from tensorwasm_executor.gpu.batch import GuestMemory

# Parsed argv buffers a session remembers.
ARGV_CACHE_ENTRIES = 64


def require_memory(memory: GuestMemory | None) -> GuestMemory:
    """`memory`, or INVALID_POINTER when the module exports none."""
    if memory is None:
        raise AbiFailure(AbiError.INVALID_POINTER, "the module exports no memory named `memory`")
    return memory


class ArgvCache:
    """Parsed argv by (argv bytes, memory size), oldest out first past `max_entries`.

    Only argv without device buffer records are kept: their validity depends on nothing
    else (the bytes and the memory size), while a device buffer may be freed.
    """

    def __init__(self, max_entries: int = ARGV_CACHE_ENTRIES) -> None:
        self._records: FIFOCache[tuple[bytes, int], tuple[ArgRecord, ...]] = FIFOCache(
            maxsize=max_entries
        )

    def __len__(self) -> int:
        return len(self._records)

    def read(
        self,
        memory: GuestMemory | None,
        args_ptr: int,
        args_len: int,
        device_buffers: dict[int, int],
    ) -> tuple[ArgRecord, ...]:
        """The records of the argv at `args_ptr` (an empty argv needs no memory).

        Raises:
            AbiFailure: the argv is too long, out of bounds or malformed.
        """
        if as_u32(args_len) > MAX_ARGV_BYTES:
            raise AbiFailure(
                AbiError.KERNEL_ARGS_UNSUPPORTED,
                f"argv has {as_u32(args_len)} bytes, more than {MAX_ARGV_BYTES}",
            )
        if as_u32(args_len) == 0 and memory is None:
            return ()
        memory = require_memory(memory)
        size = memory.size()
        start, length = check_region(args_ptr, args_len, size, "the argv")
        raw = memory.read(start, length)
        key = (raw, size)
        records = self._records.get(key)
        if records is None:
            records = parse_argv(raw, size, device_buffers)
            if not any(isinstance(record, DeviceBufferRecord) for record in records):
                self._records[key] = records
        return records
