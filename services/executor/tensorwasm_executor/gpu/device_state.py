"""The device state of one instance's `wasi:cuda` session, as a snapshot carries it: the
kernels it loaded (their PTX and entry, by kernel id) and its device buffers (their bytes,
copied back from the device, by handle).

Format, version 1 (integers little-endian):

    offset 0   8 bytes  magic b"TWDEVST\\0"
    offset 8   u32      format version (1)
    offset 12  u32      header length H
    offset 16  H bytes  header: a UTF-8 JSON object
                        {"next_kernel_id", "handles_issued",
                         "kernels": [{"id", "entry", "offset", "length"}],
                         "buffers": [{"handle", "offset", "length"}]}
               blocks   each kernel's PTX and each buffer's bytes, at their offsets
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

from tensorwasm_executor.errors import ImageFormatError

__all__ = ["DeviceState", "decode_device_state", "encode_device_state"]

MAGIC = b"TWDEVST\x00"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sII")


@dataclass(frozen=True)
class DeviceState:
    """Kernels (id, PTX, entry) and device buffers (handle, bytes) of one session, and its
    id counters (so that ids the guest holds stay valid and new ones do not collide)."""

    kernels: tuple[tuple[int, bytes, str], ...]
    buffers: tuple[tuple[int, bytes], ...]
    next_kernel_id: int
    handles_issued: int


def encode_device_state(state: DeviceState) -> bytes:
    """The state as a version-1 block."""
    blocks: list[bytes] = []
    position = 0
    kernels, buffers = [], []
    for kernel_id, ptx, entry in state.kernels:
        kernels.append({"id": kernel_id, "entry": entry, "offset": position, "length": len(ptx)})
        blocks.append(ptx)
        position += len(ptx)
    for handle, data in state.buffers:
        buffers.append({"handle": handle, "offset": position, "length": len(data)})
        blocks.append(data)
        position += len(data)
    header = json.dumps(
        {
            "next_kernel_id": state.next_kernel_id,
            "handles_issued": state.handles_issued,
            "kernels": kernels,
            "buffers": buffers,
        },
        separators=(",", ":"),
    ).encode()
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header + b"".join(blocks)


def decode_device_state(buffer: bytes | memoryview) -> DeviceState:
    """Parses a block.

    Raises:
        ImageFormatError: bad magic, an unknown version, or a malformed header or block.
    """
    view = memoryview(buffer)
    if len(view) < _PREFIX.size:
        raise ImageFormatError("device state is truncated")
    magic, version, header_length = _PREFIX.unpack_from(view)
    if magic != MAGIC or version != FORMAT_VERSION:
        raise ImageFormatError("not a device state of a known version")
    start = _PREFIX.size + header_length
    try:
        header = json.loads(bytes(view[_PREFIX.size : start]))

        def block(entry: dict[str, int]) -> bytes:
            offset, length = int(entry["offset"]), int(entry["length"])
            if offset < 0 or length < 0 or start + offset + length > len(view):
                raise ValueError("a block is out of bounds")
            return bytes(view[start + offset : start + offset + length])

        return DeviceState(
            tuple((int(k["id"]), block(k), str(k["entry"])) for k in header["kernels"]),
            tuple((int(b["handle"]), block(b)) for b in header["buffers"]),
            int(header["next_kernel_id"]),
            int(header["handles_issued"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ImageFormatError(f"device state is malformed: {exc}") from None
