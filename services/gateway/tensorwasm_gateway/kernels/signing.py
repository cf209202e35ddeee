"""Kernel manifests' signatures and field rules: the v1 signing input, HMAC-SHA256 under
the registry's key, the key's id, names, SemVer versions and the PTX's entries."""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from pathlib import Path

import blake3

DIGEST_BYTES = 32
SIGNATURE_BYTES = 32
KEY_BYTES = 32
KEY_ID_BYTES = 8
MIN_SM_VERSION, MAX_SM_VERSION = 10, 1000
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# SemVer 2.0.0's own regular expression (semver.org), capped at 64 characters.
SEMVER_PATTERN = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
MAX_VERSION_CHARS = 64
_ENTRY = re.compile(rb"\.entry\s+([A-Za-z_$%][A-Za-z0-9_$]*)\s*\(")
_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_U32 = struct.Struct("<I")


class KeyFileError(ValueError):
    """The key file is unreadable or does not hold 64 hex digits."""


def read_key_file(path: Path) -> bytes:
    """The 32-byte key written as 64 hex digits in `path` (surrounding whitespace dropped).

    Raises:
        KeyFileError: unreadable, or not exactly 64 hex digits.
    """
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read {path}: {exc}") from None
    if _HEX_KEY.fullmatch(text) is None:
        raise KeyFileError(f"{path} must hold exactly 64 hex digits (a 32-byte key)")
    return bytes.fromhex(text)


def signing_input(name: str, version: str, sm_version: int, digest: bytes) -> bytes:
    """`name || 0x00 || version || 0x00 || sm_version (u32 LE) || digest` (v1)."""
    return b"".join(
        (name.encode("utf-8"), b"\x00", version.encode("utf-8"), b"\x00",
         _U32.pack(sm_version), digest)
    )  # fmt: skip


def sign(key: bytes, name: str, version: str, sm_version: int, digest: bytes) -> bytes:
    """HMAC-SHA256 of the v1 signing input under `key`."""
    message = signing_input(name, version, sm_version, digest)
    return hmac.new(key, message, hashlib.sha256).digest()


def signature_valid(
    key: bytes, name: str, version: str, *, sm_version: int, digest: bytes, signature: bytes
) -> bool:
    """True when `signature` is the manifest's HMAC under `key` (constant-time compare)."""
    expected = sign(key, name, version, sm_version, digest)
    return hmac.compare_digest(expected, signature)


def key_id(key: bytes) -> str:
    """The key's public id: the first 8 bytes of BLAKE3(key), as 16 hex digits."""
    return blake3.blake3(key).digest()[:KEY_ID_BYTES].hex()


def ptx_digest(ptx: bytes) -> bytes:
    """BLAKE3 of the PTX text (the manifest's digest)."""
    return blake3.blake3(ptx).digest()


def name_valid(name: str) -> bool:
    """True for 1-64 characters of [A-Za-z0-9._-] starting with a letter or digit."""
    return NAME_PATTERN.fullmatch(name) is not None


def version_valid(version: str) -> bool:
    """True for a SemVer 2.0.0 version of at most 64 characters."""
    return len(version) <= MAX_VERSION_CHARS and SEMVER_PATTERN.fullmatch(version) is not None


def ptx_entries(ptx: bytes) -> list[str]:
    """The `.entry` names the PTX declares, in order."""
    return [match.group(1).decode("ascii") for match in _ENTRY.finditer(ptx)]
