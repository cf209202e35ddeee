"""Reading and writing the wasm binary format: LEB128, names, limits and the section list.

Shared by the rewriters of module binaries (`cap_watch`, `images.probes`); neither needs more
than the section structure plus what each parses itself.
"""

from __future__ import annotations

from tensorwasm_common.errors import InvalidWasmError

__all__ = [
    "HEADER", "Reader", "Section", "encode_name", "join_sections", "sleb", "split_sections",
    "uleb",
]  # fmt: skip

HEADER = b"\x00asm\x01\x00\x00\x00"

Section = tuple[int, bytes]  # (section id, payload)


class Reader:
    """A cursor over wasm bytes; every read past the end raises InvalidWasmError."""

    def __init__(self, data: bytes, position: int = 0) -> None:
        self.data = data
        self.position = position

    def byte(self) -> int:
        if self.position >= len(self.data):
            raise InvalidWasmError("truncated module")
        value = self.data[self.position]
        self.position += 1
        return value

    def skip(self, count: int) -> None:
        """Skips `count` bytes (a fixed-width immediate)."""
        if self.position + count > len(self.data):
            raise InvalidWasmError("truncated module")
        self.position += count

    def uleb(self) -> int:
        result = shift = 0
        while True:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
            if shift > 63:
                raise InvalidWasmError("malformed LEB128 integer")

    def sleb(self) -> int:
        result = shift = 0
        while True:
            byte = self.byte()
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result - (1 << shift) if byte & 0x40 else result
            if shift > 63:
                raise InvalidWasmError("malformed LEB128 integer")

    def name(self) -> str:
        length = self.uleb()
        raw = self.data[self.position : self.position + length]
        if len(raw) != length:
            raise InvalidWasmError("truncated name")
        self.position += length
        return raw.decode("utf-8", "replace")

    def limits(self) -> tuple[int, int, int | None]:
        """A table's or memory's limits: (flags, minimum, maximum or None)."""
        flags = self.byte()
        minimum = self.uleb()
        maximum = self.uleb() if flags & 0x01 else None
        if flags & 0x08:  # custom page size (log2)
            self.uleb()
        return flags, minimum, maximum

    @property
    def at_end(self) -> bool:
        return self.position >= len(self.data)


def uleb(value: int) -> bytes:
    """The unsigned LEB128 encoding of `value` (>= 0)."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def sleb(value: int) -> bytes:
    """The signed LEB128 encoding of `value`."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        done = (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40)
        out.append(byte if done else byte | 0x80)
        if done:
            return bytes(out)


def encode_name(name: str) -> bytes:
    raw = name.encode("utf-8")
    return uleb(len(raw)) + raw


def split_sections(wasm: bytes) -> list[Section]:
    """The module's sections in order, as (id, payload).

    Raises:
        InvalidWasmError: not a version-1 module binary, or a section is truncated.
    """
    if not wasm.startswith(HEADER):
        raise InvalidWasmError("not a wasm binary module (version 1)")
    reader = Reader(wasm, len(HEADER))
    sections: list[Section] = []
    while not reader.at_end:
        section_id = reader.byte()
        size = reader.uleb()
        payload = wasm[reader.position : reader.position + size]
        if len(payload) != size:
            raise InvalidWasmError("truncated section")
        reader.position += size
        sections.append((section_id, payload))
    return sections


def join_sections(sections: list[Section]) -> bytes:
    """A module binary of `sections`, in the order given."""
    body = b"".join(bytes([sid]) + uleb(len(payload)) + payload for sid, payload in sections)
    return HEADER + body
