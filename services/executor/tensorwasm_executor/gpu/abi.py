"""Validation of `wasi:cuda` guest inputs: pointers, launch dimensions, typed argv, last_error.

Everything a guest passes is checked here, before anything reaches the dispatcher. Guest
i32 values arrive signed; pointers and lengths are their u32 reinterpretation, and every
range is checked with Python integers, which cannot overflow (`offset + length` of two
u32 is at most 2**33 - 2, and is compared as it is).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tensorwasm_common.gpu_abi import (
    MAX_ARGV_BYTES,
    MAX_ARGV_RECORDS,
    MAX_BLOCK_DIM,
    MAX_BLOCK_THREADS,
    MAX_ERROR_BYTES,
    MAX_GRID_DIM,
    AbiError,
    AbiFailure,
    ArgTag,
    Dim3,
    ScalarArg,
)

_U32_MASK = 0xFFFF_FFFF
_ELLIPSIS = "…".encode()
_SIGNED = frozenset({ArgTag.I32, ArgTag.I64})


@dataclass(frozen=True)
class PointerRecord:
    """A pointer argv record: a byte range of linear memory, already bounds-checked."""

    offset: int
    length: int


@dataclass(frozen=True)
class DeviceBufferRecord:
    """A device buffer argv record (tag 0x08): bytes `[offset, size)` of one of the
    instance's device buffers, already checked to exist and to hold the offset."""

    handle: int
    offset: int
    length: int


ArgRecord = ScalarArg | PointerRecord | DeviceBufferRecord


def as_u32(value: int) -> int:
    """A guest i32 (signed, as wasmtime passes it) read as the u32 it encodes."""
    return value & _U32_MASK


def check_region(offset: int, length: int, memory_bytes: int, what: str) -> tuple[int, int]:
    """Checks that `[offset, offset + length)` lies in linear memory.

    A zero-length range may start at the very end of memory; a non-empty one may not.

    Args:
        offset: The guest's offset (an i32, read as u32).
        length: The guest's length (an i32, read as u32).
        memory_bytes: The linear memory's current size.
        what: What the range is, for the message.

    Returns:
        (start, length) as unsigned integers.

    Raises:
        AbiFailure: INVALID_POINTER when the range leaves memory.
    """
    start, size = as_u32(offset), as_u32(length)
    end = start + size  # exact: Python integers do not wrap
    if end > memory_bytes:
        raise AbiFailure(
            AbiError.INVALID_POINTER,
            f"{what} [{start}, {end}) is outside linear memory ({memory_bytes} bytes)",
        )
    return start, size


def check_dimensions(grid: Dim3, block: Dim3) -> None:
    """Checks launch dimensions against the ABI: each block dim in [1, 1024] with at most
    1024 threads per block, each grid dim in [1, 2**31 - 1] (guest i32s, so signed).

    Raises:
        AbiFailure: INVALID_DIMENSIONS.
    """
    if not all(1 <= size <= MAX_BLOCK_DIM for size in block):
        raise AbiFailure(
            AbiError.INVALID_DIMENSIONS,
            f"block {block}: each dimension must be in [1, {MAX_BLOCK_DIM}]",
        )
    threads = block[0] * block[1] * block[2]
    if threads > MAX_BLOCK_THREADS:
        raise AbiFailure(
            AbiError.INVALID_DIMENSIONS,
            f"block {block} has {threads} threads, more than {MAX_BLOCK_THREADS}",
        )
    if not all(1 <= size <= MAX_GRID_DIM for size in grid):
        raise AbiFailure(
            AbiError.INVALID_DIMENSIONS,
            f"grid {grid}: each dimension must be in [1, {MAX_GRID_DIM}]",
        )


def parse_argv(
    data: bytes, memory_bytes: int, device_buffers: Mapping[int, int] | None = None
) -> tuple[ArgRecord, ...]:
    """Parses a typed argv buffer: records `[tag u8][value LE]`, no padding, nothing after.

    Args:
        data: The argv bytes (already read from guest memory).
        memory_bytes: The linear memory's size, to check pointer records against.
        device_buffers: The instance's device buffers (handle -> size in bytes), for
            device buffer records (tag 0x08); none: every such record is invalid_args.

    Returns:
        The records in order.

    Raises:
        AbiFailure: KERNEL_ARGS_UNSUPPORTED (more than 4096 bytes or 128 records),
            INVALID_ARGS (an unknown tag or a truncated record), INVALID_POINTER (a
            pointer record outside linear memory).
    """
    if len(data) > MAX_ARGV_BYTES:
        raise AbiFailure(
            AbiError.KERNEL_ARGS_UNSUPPORTED,
            f"argv has {len(data)} bytes, more than {MAX_ARGV_BYTES}",
        )
    records: list[ArgRecord] = []
    position = 0
    while position < len(data):
        if len(records) == MAX_ARGV_RECORDS:
            raise AbiFailure(
                AbiError.KERNEL_ARGS_UNSUPPORTED, f"argv has more than {MAX_ARGV_RECORDS} records"
            )
        raw_tag = data[position]
        try:
            tag = ArgTag(raw_tag)
        except ValueError:
            raise AbiFailure(
                AbiError.INVALID_ARGS,
                f"argv record {len(records)} at byte {position} has unknown tag {raw_tag:#04x}",
            ) from None
        start, end = position + 1, position + 1 + tag.value_bytes
        if end > len(data):
            raise AbiFailure(
                AbiError.INVALID_ARGS,
                f"argv record {len(records)} ({tag.name.lower()}) at byte {position} is "
                f"truncated: {len(data) - start} of {tag.value_bytes} value bytes",
            )
        value = data[start:end]
        if tag is ArgTag.PTR:
            offset = int.from_bytes(value[:4], "little")
            length = int.from_bytes(value[4:], "little")
            what = f"argv record {len(records)} (ptr)"
            records.append(PointerRecord(*check_region(offset, length, memory_bytes, what)))
        elif tag is ArgTag.DEVICE_BUFFER:
            handle = int.from_bytes(value[:4], "little")
            offset = int.from_bytes(value[4:], "little")
            records.append(_device_record(handle, offset, device_buffers or {}, len(records)))
        else:
            number = int.from_bytes(value, "little", signed=tag in _SIGNED)
            records.append(ScalarArg(tag, number))
        position = end
    return tuple(records)


def _device_record(
    handle: int, offset: int, device_buffers: Mapping[int, int], index: int
) -> DeviceBufferRecord:
    size = device_buffers.get(handle)
    if size is None:
        raise AbiFailure(
            AbiError.INVALID_ARGS,
            f"argv record {index} (device_buffer) names buffer {handle}, which this "
            "instance does not hold",
        )
    if offset >= size:
        raise AbiFailure(
            AbiError.INVALID_POINTER,
            f"argv record {index} (device_buffer): offset {offset} is outside buffer {handle} "
            f"({size} bytes)",
        )
    return DeviceBufferRecord(handle, offset, size - offset)


def truncate_error(message: str) -> bytes:
    """A `last_error` message as stored: UTF-8, at most 512 bytes; a longer one is cut at a
    character boundary and ends with "…"."""
    data = message.encode("utf-8")
    if len(data) <= MAX_ERROR_BYTES:
        return data
    head = data[: MAX_ERROR_BYTES - len(_ELLIPSIS)]
    return head.decode("utf-8", errors="ignore").encode("utf-8") + _ELLIPSIS
