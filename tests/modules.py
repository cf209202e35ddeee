"""Modules built for tests from the WAT fixtures: a module grown to a size (same code)."""

from __future__ import annotations


def padded(module: bytes, padding_bytes: int) -> bytes:
    """`module` with a custom section of `padding_bytes` zeros: a larger module that
    compiles and runs as the original (custom sections are skipped)."""
    name = b"padding"
    body = bytes([len(name)]) + name + b"\x00" * padding_bytes
    size = len(body)
    leb = bytearray()
    while True:
        byte, size = size & 0x7F, size >> 7
        leb.append(byte | (0x80 if size else 0))
        if not size:
            break
    return module + b"\x00" + bytes(leb) + body
