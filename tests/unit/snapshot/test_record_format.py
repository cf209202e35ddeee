"""The snapshot record format: golden fixtures read byte-exactly, signatures checked before
decompression, and every kind of damage refused with its typed error."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import pytest
import zstandard
from tensorwasm_common.errors import (
    SnapshotCorruptError,
    SnapshotSignatureError,
    UnsupportedSnapshotFormatError,
)
from tensorwasm_snapshot import record_format
from tensorwasm_snapshot.record_format import MAC_BYTES, PayloadEncoder, RecordMeta

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "snapshots"
GOLDEN = ("v1_compiled_module", "v1_instance_image_signed")
KEY = b"k" * 32
META = RecordMeta(1, "engine-a", "ab" * 32, "", "acme", 1_700_000_000_000_000_000)
PAYLOAD = bytes(range(256)) * 40


def record(*, key: bytes | None = None, payload: bytes = PAYLOAD) -> bytes:
    return record_format.encode(META, payload, signing_key=key)


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_fixtures_decode_byte_exactly(name: str) -> None:
    raw = (FIXTURES / f"{name}.twsnap").read_bytes()
    expected = json.loads((FIXTURES / f"{name}.json").read_text())
    key = (FIXTURES / "signing_key.txt").read_bytes() if expected["signed"] else None
    parsed, payload = record_format.decode(raw, signing_key=key)
    assert payload == (FIXTURES / f"{name}.payload").read_bytes()
    got = {
        **dataclasses.asdict(parsed.meta),
        "format_version": parsed.format_version,
        "signed": parsed.signed,
    }
    assert got == expected
    # Today's encoder still writes the very same preamble and header bytes.
    header = record_format.encode_header(
        parsed.meta, frame_size=len(parsed.frame), signed=parsed.signed
    )
    assert raw.startswith(header)
    assert len(raw) == len(header) + len(parsed.frame) + (MAC_BYTES if parsed.signed else 0)


def test_signed_golden_fixture_is_refused_with_another_key() -> None:
    raw = (FIXTURES / "v1_instance_image_signed.twsnap").read_bytes()
    with pytest.raises(SnapshotSignatureError):
        record_format.decode(raw, signing_key=KEY)


def test_round_trip_unsigned_and_signed() -> None:
    for key in (None, KEY):
        parsed, payload = record_format.decode(record(key=key), signing_key=key)
        assert payload == PAYLOAD
        assert parsed.signed is (key is not None)
        assert parsed.meta.payload_size_bytes == len(PAYLOAD)
        assert parsed.meta.tenant == "acme"


def test_empty_payload() -> None:
    _, payload = record_format.decode(record(payload=b""))
    assert payload == b""


def test_streaming_encoder_matches_in_memory_encoding(tmp_path: Path) -> None:
    encoder = PayloadEncoder(spool_dir=tmp_path)
    for start in range(0, len(PAYLOAD), 1000):
        encoder.write(PAYLOAD[start : start + 1000])
    sealed = encoder.finish(META, signing_key=KEY)
    raw = b"".join(sealed.pieces(chunk_bytes=100))
    encoder.close()
    assert len(raw) == sealed.size_bytes
    assert record_format.decode(raw, signing_key=KEY)[1] == PAYLOAD


def test_encoder_refuses_more_than_its_cap() -> None:
    encoder = PayloadEncoder(max_payload_bytes=10)
    encoder.write(b"x" * 10)
    with pytest.raises(OverflowError):
        encoder.write(b"y")
    encoder.close()


@pytest.mark.parametrize("offset", [100, -40])  # in the header; in the frame
def test_flipped_byte_is_corrupt(offset: int) -> None:
    raw = bytearray(record())
    raw[offset] ^= 0x40
    with pytest.raises(SnapshotCorruptError):
        record_format.decode(bytes(raw))


@pytest.mark.parametrize("offset", [20, 100, -40, -1])
def test_flipped_byte_of_a_signed_record_fails_its_signature(offset: int) -> None:
    raw = bytearray(record(key=KEY))
    raw[offset] ^= 0x01
    with pytest.raises(SnapshotSignatureError):
        record_format.decode(bytes(raw), signing_key=KEY)


@pytest.mark.parametrize("keep", [0, 10, 16, 60, 150, -1])
def test_truncated_record_is_corrupt(keep: int) -> None:
    raw = record()
    with pytest.raises(SnapshotCorruptError):
        record_format.decode(raw[:keep])


def test_wrong_magic_is_corrupt() -> None:
    raw = b"\x89TWBLOB\n" + record()[8:]
    with pytest.raises(SnapshotCorruptError, match="magic"):
        record_format.decode(raw)


def test_future_version_is_unsupported() -> None:
    raw = bytearray(record())
    struct.pack_into("<H", raw, 8, record_format.FORMAT_VERSION + 1)
    with pytest.raises(UnsupportedSnapshotFormatError) as caught:
        record_format.decode(bytes(raw))
    assert caught.value.metadata == {"format_version": "2"}


def test_unknown_flag_is_unsupported() -> None:
    raw = bytearray(record())
    struct.pack_into("<H", raw, 10, 0x8000)
    with pytest.raises(UnsupportedSnapshotFormatError):
        record_format.decode(bytes(raw))


def test_a_store_with_a_key_refuses_unsigned_records() -> None:
    with pytest.raises(SnapshotSignatureError, match="unsigned"):
        record_format.decode(record(), signing_key=KEY)


def test_a_store_without_a_key_reads_signed_records() -> None:
    assert record_format.decode(record(key=KEY))[1] == PAYLOAD


def test_signature_is_checked_before_decompressing(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decompression(*args: object, **kwargs: object) -> None:
        raise AssertionError("decompressed before the signature was checked")

    raw = bytearray(record(key=KEY))
    raw[-40] ^= 0x01  # inside the frame
    monkeypatch.setattr(zstandard, "ZstdDecompressor", no_decompression)
    with pytest.raises(SnapshotSignatureError):
        record_format.parse(bytes(raw), signing_key=KEY, max_payload_bytes=1 << 20)


def test_declared_size_over_the_cap_is_refused_before_decompressing() -> None:
    with pytest.raises(SnapshotCorruptError, match="cap"):
        record_format.parse(record(), signing_key=None, max_payload_bytes=len(PAYLOAD) - 1)


def test_frame_expanding_past_the_declared_size_is_corrupt() -> None:
    # A well-formed header that declares 16 bytes over a frame holding a megabyte of zeros.
    frame = zstandard.ZstdCompressor().compress(bytes(1 << 20))
    small = dataclasses.replace(META, payload_digest="00" * 32, payload_size_bytes=16)
    raw = record_format.encode_header(small, frame_size=len(frame), signed=False) + frame
    parsed = record_format.parse(raw, signing_key=None, max_payload_bytes=1 << 30)
    pieces = record_format.iter_payload(parsed, chunk_bytes=4096)
    with pytest.raises(SnapshotCorruptError, match="longer than declared"):
        list(pieces)
