"""The blob file's codec (format 2: zstd or raw per blob) and golden files of both formats.

`tests/fixtures/blobs/v1_*.twblob` were written by the blob store of format 1 (every blob one
zstd frame); `v2_*` by format 2. Today's store must read all of them byte-exactly, index
them when it starts, and store snapshot records raw (their payload is zstd already).
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import blake3
import pytest
from tensorwasm_common.errors import BlobIntegrityError, TooLargeError
from tensorwasm_snapshot.blobstore import BlobStore, Codec
from tensorwasm_snapshot.object_store import SnapshotStore
from tensorwasm_snapshot.records import SnapshotRecords

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
BLOBS = FIXTURES / "blobs"
RECORD = (FIXTURES / "snapshots" / "v1_compiled_module.twsnap").read_bytes()
TEXT = (BLOBS / "text.plain").read_bytes()
HEADER = struct.Struct("<8sQHHi32sQ")  # format 2
MIB = 1 << 20

GOLDEN = {  # fixture -> (plaintext, codec, header size)
    "v1_record.twblob": (RECORD, Codec.ZSTD, 60),
    "v1_text.twblob": (TEXT, Codec.ZSTD, 60),
    "v2_record_raw.twblob": (RECORD, Codec.RAW, 64),
    "v2_text_zstd.twblob": (TEXT, Codec.ZSTD, 64),
}


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "store", max_blob_bytes=4 * MIB, chunk_bytes=100)


def install(root: Path, fixture: str) -> str:
    """Copies a golden blob file into the store at `root` as a crash-free store holds it."""
    digest = blake3.blake3(GOLDEN[fixture][0]).hexdigest()
    target = root / "blobs" / digest[:2] / digest
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(BLOBS / fixture, target)
    return digest


def flip(path: Path, offset: int) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([byte ^ 0x01]))


@pytest.mark.parametrize("fixture", sorted(GOLDEN))
def test_golden_blob_files_read_byte_exactly(store: BlobStore, fixture: str) -> None:
    plaintext, codec, _ = GOLDEN[fixture]
    digest = install(store.root, fixture)
    info = store.stat(digest)
    assert (info.size_bytes, info.stored_size_bytes) == (
        len(plaintext),
        (BLOBS / fixture).stat().st_size,
    )
    assert store.codec(digest) == codec
    assert store.read_bytes(digest) == plaintext
    chunks = list(store.open_verified(digest))  # chunk_bytes=100: many pieces
    assert len(chunks) > 1 and b"".join(chunks) == plaintext
    assert store.verify(digest) == info


@pytest.mark.parametrize("fixture", sorted(GOLDEN))
def test_damaged_golden_blob_is_refused(store: BlobStore, fixture: str) -> None:
    _, _, header_size = GOLDEN[fixture]
    digest = install(store.root, fixture)
    flip(store.path_of(digest), header_size + 20)  # in the body
    with pytest.raises(BlobIntegrityError):
        store.read_bytes(digest)
    with pytest.raises(BlobIntegrityError):
        next(store.open_verified(digest))


def test_old_format_files_are_indexed_when_the_store_starts(tmp_path: Path) -> None:
    digests = {install(tmp_path, name) for name in GOLDEN}  # 2 distinct plaintexts
    store = SnapshotStore.open(tmp_path)
    try:
        assert store.index.digests() == digests
        assert {store.stat(d).size_bytes for d in digests} == {len(RECORD), len(TEXT)}
    finally:
        store.close()


def test_todays_raw_writer_matches_the_golden_file(store: BlobStore) -> None:
    info, _ = store.put_bytes(RECORD, codec=Codec.RAW)
    assert store.path_of(info.digest).read_bytes() == (BLOBS / "v2_record_raw.twblob").read_bytes()


def test_todays_zstd_header_matches_the_golden_file(store: BlobStore) -> None:
    info, _ = store.put_bytes(TEXT)
    header = store.path_of(info.digest).read_bytes()[: HEADER.size]
    golden = HEADER.unpack((BLOBS / "v2_text_zstd.twblob").read_bytes()[: HEADER.size])
    magic, size, codec, flags, level, digest, _frame = HEADER.unpack(header)
    assert (magic, size, codec, flags, level, digest) == golden[:6]
    assert (magic, codec, flags) == (b"TWBLOB\x00\x02", Codec.ZSTD, 0)


def test_raw_blob_is_the_plaintext_after_the_header(store: BlobStore) -> None:
    data = os.urandom(MIB + 7)
    info, deduplicated = store.put_bytes(data, codec=Codec.RAW)
    assert not deduplicated
    raw = store.path_of(info.digest).read_bytes()
    assert info.stored_size_bytes == len(raw) == HEADER.size + len(data)
    magic, size, codec, flags, level, digest, body = HEADER.unpack(raw[: HEADER.size])
    assert (magic, size, codec, flags, level) == (b"TWBLOB\x00\x02", len(data), 0, 0, 0)
    assert (digest.hex(), body) == (info.digest, len(data))
    assert raw[HEADER.size :] == data
    assert store.read_bytes(info.digest) == data


def test_compressible_bytes_stored_raw_are_not_compressed(store: BlobStore) -> None:
    info, _ = store.put_bytes(b"\x00" * MIB, codec=Codec.RAW)
    assert info.stored_size_bytes == HEADER.size + MIB
    zstd, _ = store.put_bytes(b"\x01" * MIB)
    assert zstd.stored_size_bytes < 1000


def test_dedupe_keeps_the_stored_codec(store: BlobStore) -> None:
    first, _ = store.put_bytes(TEXT)
    second, deduplicated = store.put_bytes(TEXT, codec=Codec.RAW)
    assert deduplicated and second == first
    assert store.codec(first.digest) == Codec.ZSTD


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_raw_blob_with_a_flipped_byte_serves_nothing(store: BlobStore, where: str) -> None:
    info, _ = store.put_bytes(os.urandom(1000), codec=Codec.RAW)
    offset = {"first": HEADER.size, "middle": HEADER.size + 500, "last": HEADER.size + 999}
    flip(store.path_of(info.digest), offset[where])
    chunks = store.open_verified(info.digest)
    with pytest.raises(BlobIntegrityError):
        next(chunks)


@pytest.mark.parametrize("keep", [0, 10, HEADER.size, HEADER.size + 500])
def test_truncated_raw_blob_is_damaged(store: BlobStore, keep: int) -> None:
    info, _ = store.put_bytes(os.urandom(1000), codec=Codec.RAW)
    os.truncate(store.path_of(info.digest), keep)
    with pytest.raises(BlobIntegrityError):
        store.stat(info.digest)
    with pytest.raises(BlobIntegrityError):
        store.read_bytes(info.digest)


def test_raw_header_over_the_cap_is_refused_before_reading(store: BlobStore) -> None:
    # A consistent raw file whose declared size is over max_blob_bytes: the bomb guard.
    data = b"x" * 1000
    digest = blake3.blake3(data).hexdigest()
    path = store.path_of(digest)
    path.parent.mkdir(parents=True)
    big = 8 * MIB
    header = HEADER.pack(b"TWBLOB\x00\x02", big, 0, 0, 0, bytes.fromhex(digest), big)
    with path.open("wb") as fh:
        fh.write(header)
        fh.truncate(HEADER.size + big)  # sparse: the file size agrees with the header
    with pytest.raises(BlobIntegrityError, match="over max_blob_bytes"):
        store.stat(digest)


def test_raw_header_whose_size_disagrees_with_its_body_is_damaged(store: BlobStore) -> None:
    data = b"y" * 1000
    digest = blake3.blake3(data).hexdigest()
    path = store.path_of(digest)
    path.parent.mkdir(parents=True)
    header = HEADER.pack(b"TWBLOB\x00\x02", 10, 0, 0, 0, bytes.fromhex(digest), len(data))
    path.write_bytes(header + data)
    with pytest.raises(BlobIntegrityError, match="raw body size"):
        store.stat(digest)


def test_raw_upload_over_the_cap_is_refused_and_leaves_nothing(store: BlobStore) -> None:
    with pytest.raises(TooLargeError):
        store.put_bytes(b"z" * (4 * MIB + 1), codec=Codec.RAW)
    assert list((store.root / "tmp").iterdir()) == []
    assert list(store.digests()) == []


def test_records_are_stored_raw(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path)
    try:
        records = SnapshotRecords(store)
        payload = b"compiled module bytes " * 5000
        creator = records.creator(
            "acme",
            kind=1,
            engine_fingerprint="e",
            source_digest="ab" * 32,
            variant="",
            payload_size_bytes=len(payload),
        )
        creator.write(payload)
        row = creator.commit()
        info = store.stat(row.record_digest)
        assert store.blobs.codec(row.record_digest) == Codec.RAW
        assert info.stored_size_bytes == HEADER.size + row.record_size_bytes
        assert row.record_size_bytes < len(payload) // 10  # the record's own zstd payload
        _, chunks = records.open_payload("acme", row.id)
        assert b"".join(chunks) == payload
        assert store.usage("acme").size_bytes == row.record_size_bytes
    finally:
        store.close()


def test_plain_puts_stay_compressed(tmp_path: Path) -> None:
    store = SnapshotStore.open(tmp_path)
    try:
        info, _ = store.put_bytes(b"module " * 10_000, tenant="acme", ref_name="functions/m")
        assert store.blobs.codec(info.digest) == Codec.ZSTD
        assert info.stored_size_bytes < 1000
    finally:
        store.close()
