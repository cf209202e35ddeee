"""BLAKE3 content addresses: 64 lowercase hex digits of the plaintext's digest."""

from __future__ import annotations

import re

import blake3

DIGEST_PATTERN = re.compile(r"[0-9a-f]{64}")


def blake3_hex(data: bytes) -> str:
    """The content address of `data`."""
    return blake3.blake3(data).hexdigest()


def is_digest(value: str) -> bool:
    """True when `value` is a well-formed content address."""
    return bool(DIGEST_PATTERN.fullmatch(value))
