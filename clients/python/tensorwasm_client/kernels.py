"""Signing and verifying kernel manifests on the client side: the v1 signing input
(`name || 0x00 || version || 0x00 || sm_version (u32 LE) || digest`), HMAC-SHA256 under the
registry's key, BLAKE3 digests of the PTX text, and the key's public id."""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import struct
from pathlib import Path

import blake3
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_U32 = struct.Struct("<I")


def read_key_file(path: Path) -> bytes:
    """The 32-byte key written as 64 hex digits in `path`.

    Raises:
        ValueError: the file does not hold exactly 64 hex digits.
        OSError: it cannot be read.
    """
    text = path.read_text(encoding="ascii").strip()
    if _HEX_KEY.fullmatch(text) is None:
        raise ValueError(f"{path} must hold exactly 64 hex digits (a 32-byte key)")
    return bytes.fromhex(text)


def signing_input(name: str, version: str, sm_version: int, digest: bytes) -> bytes:
    """The v1 signing input of a manifest."""
    return b"".join(
        (name.encode(), b"\x00", version.encode(), b"\x00", _U32.pack(sm_version), digest)
    )


def sign(key: bytes, name: str, version: str, sm_version: int, digest: bytes) -> bytes:
    """HMAC-SHA256 of the signing input under `key`."""
    return hmac.new(key, signing_input(name, version, sm_version, digest), hashlib.sha256).digest()


def key_id(key: bytes) -> str:
    """The key's public id: the first 8 bytes of BLAKE3(key), as 16 hex digits."""
    return blake3.blake3(key).digest()[:8].hex()


def signed_manifest(
    key: bytes,
    name: str,
    version: str,
    sm_version: int,
    ptx: bytes,
    *,
    entry: str = "",
    private: bool = False,
) -> pb.KernelManifest:
    """The manifest of `ptx`, its digest computed and signed under `key`."""
    digest = blake3.blake3(ptx).digest()
    return pb.KernelManifest(
        name=name,
        version=version,
        sm_version=sm_version,
        digest=digest,
        signature=sign(key, name, version, sm_version, digest),
        key_id=key_id(key),
        entry=entry,
        visibility=pb.KERNEL_VISIBILITY_PRIVATE if private else pb.KERNEL_VISIBILITY_SHARED,
    )


class Verdict(enum.Enum):
    """What `verify` found, in the order it checks."""

    VALID = "valid"
    DIGEST_MISMATCH = "the PTX text does not hash to the manifest's digest"
    KEY_MISMATCH = "the manifest was signed with another key"
    BAD_SIGNATURE = "the signature does not verify under the key"


def verify(manifest: pb.KernelManifest, ptx: bytes, key: bytes) -> Verdict:
    """Checks a fetched kernel: the PTX's digest first, then the signing key's id (when the
    manifest names one), then the HMAC (constant-time)."""
    if blake3.blake3(ptx).digest() != manifest.digest:
        return Verdict.DIGEST_MISMATCH
    if manifest.key_id and manifest.key_id != key_id(key):
        return Verdict.KEY_MISMATCH
    expected = sign(key, manifest.name, manifest.version, manifest.sm_version, manifest.digest)
    return (
        Verdict.VALID
        if hmac.compare_digest(expected, manifest.signature)
        else Verdict.BAD_SIGNATURE
    )
