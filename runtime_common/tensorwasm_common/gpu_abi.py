"""The `wasi:cuda/host@0.2.0` guest ABI shared by the executor and the dispatcher.

The error codes, the argv record tags and the caps are the ABI's (DESIGN §4); they
are part of the guest contract and never change. The executor validates every guest
input against them; the dispatcher reports each command's outcome with the same codes.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

MODULE = "wasi:cuda/host@0.2.0"
# Our own extensions (device-resident buffers, GPU time, JIT kernels), kept out of the
# original module so that one stays byte-for-byte compatible.
EXT_MODULE = "tensorwasm:gpu/host@0.1.0"
# Device buffers one instance may hold at once (their bytes count against the tenant's
# GPU memory quota in the dispatcher).
MAX_DEVICE_BUFFERS_PER_INSTANCE = 1024

MAX_PTX_BYTES = 8 << 20  # per load
MAX_TOTAL_PTX_BYTES = 64 * MAX_PTX_BYTES  # per instance
MAX_KERNELS_PER_INSTANCE = 256
MAX_ENTRY_BYTES = 256
MAX_ARGV_RECORDS = 128
MAX_ARGV_BYTES = 4096
MAX_BLOCK_DIM = 1024
MAX_BLOCK_THREADS = 1024
MAX_GRID_DIM = 2**31 - 1
MAX_ERROR_BYTES = 512


class AbiError(enum.IntEnum):
    """The stable error codes a `wasi:cuda` function returns (0 is success)."""

    NOT_AVAILABLE = -1
    INVALID_POINTER = -2
    INVALID_KERNEL = -3
    MALFORMED_PTX = -4
    LAUNCH_FAILED = -5
    QUOTA_EXCEEDED = -6
    INTERNAL = -7
    INVALID_DIMENSIONS = -8
    INVALID_ARGS = -9
    KERNEL_ARGS_UNSUPPORTED = -10

    @property
    def label(self) -> str:
        """The ABI's snake_case name, e.g. `invalid_pointer`."""
        return self.name.lower()


class AbiFailure(Exception):  # noqa: N818 - a result to hand back, not a bug
    """A `wasi:cuda` operation failed with an ABI code; the message is for `last_error`."""

    def __init__(self, code: AbiError, message: str) -> None:
        """Records the code and the message.

        Args:
            code: The ABI error code the guest gets.
            message: What went wrong, for a person (the guest's `last_error`).
        """
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"AbiFailure({self.code.label}, {self.message!r})"


class ArgTag(enum.IntEnum):
    """The tag byte of a typed argv record; the value follows, little-endian."""

    I32 = 0x01
    I64 = 0x02
    F32 = 0x03
    F64 = 0x04
    U32 = 0x05
    U64 = 0x06
    PTR = 0x07  # u32 guest offset + u32 byte length
    # Extension: u32 device buffer handle (from `tensorwasm:gpu`) + u32 byte offset into
    # it. A guest that never allocated a buffer gets invalid_args for it, as the ABI
    # answers an unknown tag, so guests built for the plain ABI see no difference.
    DEVICE_BUFFER = 0x08

    @property
    def value_bytes(self) -> int:
        """How many value bytes follow the tag."""
        return 4 if self in (ArgTag.I32, ArgTag.F32, ArgTag.U32) else 8


@dataclass(frozen=True)
class ScalarArg:
    """A scalar kernel argument: its argv tag and value (i32/i64 signed, f32/f64 as raw
    bits). The executor parses it from the guest's argv; the dispatcher receives it."""

    tag: ArgTag
    value: int


# A grid or block: (x, y, z).
Dim3 = tuple[int, int, int]


@dataclass(frozen=True)
class BufferRef:
    """A pointer argument on the wire: a byte range of one of the batch's staged regions.
    The executor sends it in place of a guest pointer; the dispatcher resolves it."""

    buffer_id: int
    offset_bytes: int
    length_bytes: int


def ptx_declares_entry(ptx: bytes, entry: str) -> bool:
    """Whether the PTX text declares `.entry <entry>(` (a kernel the driver can find).

    Args:
        ptx: The PTX text's bytes.
        entry: The entry symbol.

    Returns:
        True when an `.entry` directive names exactly `entry`.
    """
    pattern = rb"\.entry\s+" + re.escape(entry.encode("utf-8")) + rb"\s*\("
    return re.search(pattern, ptx) is not None
