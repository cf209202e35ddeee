"""Unit tests for tensorwasm_common.digests: BLAKE3 content addresses."""

from __future__ import annotations

import pytest
from tensorwasm_common.digests import blake3_hex, is_digest


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"),
        (b"\x00", "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213"),
        (b"abc", "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"),
    ],
)
def test_blake3_hex_known_vectors(data: bytes, expected: str) -> None:
    assert blake3_hex(data) == expected


def test_blake3_hex_is_a_valid_digest_and_content_sensitive() -> None:
    digest = blake3_hex(b"\x00asm\x01\x00\x00\x00")
    assert is_digest(digest)
    assert digest != blake3_hex(b"\x00asm\x01\x00\x00\x01")
    assert blake3_hex(b"x" * 100_000) == blake3_hex(bytes(b"x" * 100_000))


@pytest.mark.parametrize(
    "value",
    [
        "0" * 64,
        "f" * 64,
        "0123456789abcdef" * 4,
    ],
)
def test_is_digest_accepts(value: str) -> None:
    assert is_digest(value) is True


@pytest.mark.parametrize(
    "value",
    [
        "",
        "0" * 63,
        "0" * 65,
        "A" * 64,
        "0123456789ABCDEF" * 4,
        "g" * 64,
        " " + "0" * 63,
        "0" * 63 + " ",
        "\n" + "0" * 64,
        "0" * 64 + "\n0",
        "0" * 64 + "\n",
        "../" + "0" * 61,
    ],
)
def test_is_digest_rejects(value: str) -> None:
    assert is_digest(value) is False
