"""Kernel manifests' signing rules: the exact v1 signing input, the same signature from the
gateway and the client library, key files, names, SemVer versions, PTX entries."""

from __future__ import annotations

import hashlib
import hmac
import struct
from pathlib import Path

import blake3
import pytest
from tensorwasm_client import kernels as client_kernels
from tensorwasm_gateway.kernels import signing

KEY = bytes(range(32))
DIGEST = blake3.blake3(b".entry k(\n)").digest()


def test_the_signing_input_is_name_nul_version_nul_sm_le32_digest() -> None:
    expected = b"matmul.f32" + b"\x00" + b"1.2.0" + b"\x00" + struct.pack("<I", 80) + DIGEST
    assert signing.signing_input("matmul.f32", "1.2.0", 80, DIGEST) == expected
    assert client_kernels.signing_input("matmul.f32", "1.2.0", 80, DIGEST) == expected
    mac = hmac.new(KEY, expected, hashlib.sha256).digest()
    assert signing.sign(KEY, "matmul.f32", "1.2.0", 80, DIGEST) == mac
    assert client_kernels.sign(KEY, "matmul.f32", "1.2.0", 80, DIGEST) == mac


def test_a_signature_verifies_only_for_its_own_fields_and_key() -> None:
    signature = signing.sign(KEY, "k", "1.0.0", 80, DIGEST)

    def valid(**changes: object) -> bool:
        fields: dict[str, object] = {
            "key": KEY, "name": "k", "version": "1.0.0", "sm_version": 80, "digest": DIGEST,
            "signature": signature,
        }  # fmt: skip
        fields.update(changes)
        return signing.signature_valid(**fields)  # type: ignore[arg-type]

    assert valid()
    assert not valid(key=bytes(32))
    assert not valid(name="k2")
    assert not valid(version="1.0.1")
    assert not valid(sm_version=81)
    assert not valid(digest=bytes(32))
    assert not valid(signature=bytes([signature[0] ^ 1]) + signature[1:])


def test_key_ids_are_the_first_8_bytes_of_blake3_of_the_key() -> None:
    assert signing.key_id(KEY) == blake3.blake3(KEY).digest()[:8].hex()
    assert client_kernels.key_id(KEY) == signing.key_id(KEY)


def test_key_files_hold_64_hex_digits(tmp_path: Path) -> None:
    good = tmp_path / "good.key"
    good.write_text(KEY.hex().upper() + "\n")
    assert signing.read_key_file(good) == KEY
    for text in ("", "00" * 31, "zz" * 32, "00" * 33):
        bad = tmp_path / "bad.key"
        bad.write_text(text)
        with pytest.raises(signing.KeyFileError):
            signing.read_key_file(bad)
    with pytest.raises(signing.KeyFileError):
        signing.read_key_file(tmp_path / "missing.key")


@pytest.mark.parametrize(
    ("version", "valid"),
    [
        ("1.0.0", True), ("0.0.1", True), ("1.2.3-rc.1+build.5", True), ("10.20.30", True),
        ("1.0", False), ("01.0.0", False), ("1.0.0-", False), ("v1.0.0", False), ("", False),
        ("1.0.0-" + "a" * 60, False),  # over 64 characters
    ],
)  # fmt: skip
def test_versions_are_semver(version: str, valid: bool) -> None:
    assert signing.version_valid(version) is valid


@pytest.mark.parametrize(
    ("name", "valid"),
    [("matmul.f32", True), ("a", True), ("A-b_c.9", True), ("", False), (".hidden", False),
     ("a/b", False), ("a b", False), ("a" * 65, False)],
)  # fmt: skip
def test_names(name: str, valid: bool) -> None:
    assert signing.name_valid(name) is valid


def test_ptx_entries_in_order() -> None:
    ptx = b".visible .entry first(\n.param .u64 a)\n{}\n.entry second (\n)\n.func helper()\n"
    assert signing.ptx_entries(ptx) == ["first", "second"]


def test_client_verify_checks_digest_then_key_then_signature() -> None:
    ptx = b".visible .entry k()\n{}\n"
    manifest = client_kernels.signed_manifest(KEY, "k", "1.0.0", 80, ptx)
    assert client_kernels.verify(manifest, ptx, KEY) is client_kernels.Verdict.VALID
    assert client_kernels.verify(manifest, ptx + b" ", bytes(32)) is (
        client_kernels.Verdict.DIGEST_MISMATCH
    )
    assert client_kernels.verify(manifest, ptx, bytes(32)) is client_kernels.Verdict.KEY_MISMATCH
    manifest.key_id = ""
    assert client_kernels.verify(manifest, ptx, bytes(32)) is client_kernels.Verdict.BAD_SIGNATURE
