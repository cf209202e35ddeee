"""Tests of the snapshot blob store against real files: round trips, limits, damage, races."""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest
import zstandard
from tensorwasm_common.errors import (
    BlobIntegrityError,
    Code,
    InvalidArgumentError,
    InvalidDigestError,
    TooLargeError,
)
from tensorwasm_snapshot.blobstore import BlobInfo, BlobStore
from tensorwasm_snapshot.errors import BlobNotFoundError, DigestMismatchError

MIB = 1 << 20
HEADER_BYTES = 64  # format 2; format 1 (60 bytes) is read by test_blob_codec.py
HEADER = struct.Struct("<8sQHHi32sQ")
HEADER_V1 = struct.Struct("<8sQi32sQ")


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "store", chunk_bytes=MIB, max_blob_bytes=16 * MIB)


def blob_path(store: BlobStore, digest: str) -> Path:
    return store.root / "blobs" / digest[:2] / digest


def blob_files(store: BlobStore) -> list[Path]:
    return sorted(p for p in (store.root / "blobs").rglob("*") if p.is_file())


def tmp_files(store: BlobStore) -> list[Path]:
    return sorted((store.root / "tmp").iterdir())


def drain(chunks: Iterator[bytes]) -> tuple[list[bytes], BaseException | None]:
    """Collects what an iterator yields before it raises, and what it raised."""
    got: list[bytes] = []
    try:
        for chunk in chunks:
            got.append(chunk)
    except Exception as exc:
        return got, exc
    return got, None


def assert_damaged(store: BlobStore, digest: str) -> None:
    got, exc = drain(store.open_verified(digest))
    assert isinstance(exc, BlobIntegrityError)
    assert got == []
    assert exc.code is Code.DATA_LOSS and exc.reason == "BLOB_INTEGRITY"
    assert exc.metadata == {"digest": digest}
    with pytest.raises(BlobIntegrityError):
        store.read_bytes(digest)


def patch(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as fh:
        fh.seek(offset)
        fh.write(data)


@pytest.mark.parametrize("size", [0, 1, 1000, 3 * MIB + 17])
def test_round_trip(store: BlobStore, size: int) -> None:
    data = os.urandom(size)
    info, deduplicated = store.put_bytes(data)
    assert not deduplicated
    assert info.digest == blake3.blake3(data).hexdigest()
    assert info.size_bytes == size
    assert store.stat(info.digest) == info
    assert info.stored_size_bytes == blob_path(store, info.digest).stat().st_size
    chunks = list(store.open_verified(info.digest))
    assert b"".join(chunks) == data == store.read_bytes(info.digest)
    assert all(len(c) <= store.chunk_bytes for c in chunks)
    assert len(chunks) == -(-size // MIB)
    assert tmp_files(store) == []


def test_streamed_write_in_pieces(store: BlobStore) -> None:
    data = os.urandom(2 * MIB + 5)
    with store.writer(
        expected_digest=blake3.blake3(data).hexdigest(), expected_size=len(data)
    ) as w:
        for offset in range(0, len(data), 100_000):
            w.write(data[offset : offset + 100_000])
        info, deduplicated = w.commit()
    assert not deduplicated
    assert store.read_bytes(info.digest) == data


def test_stored_compressed(store: BlobStore) -> None:
    data = b"tensorwasm snapshot page " * 200_000
    info, _ = store.put_bytes(data)
    assert info.stored_size_bytes < len(data) // 100
    with blob_path(store, info.digest).open("rb") as fh:
        header = fh.read(HEADER_BYTES)
    magic, size, codec, flags, level, digest, frame_size = HEADER.unpack(header)
    assert (magic, size, codec, flags, level, digest.hex()) == (
        b"TWBLOB\x00\x02",
        len(data),
        1,  # zstd, the default codec
        0,
        3,
        info.digest,
    )
    assert frame_size == info.stored_size_bytes - HEADER_BYTES


def test_dedupe(store: BlobStore) -> None:
    first = store.put_bytes(b"same bytes")
    second = store.put_bytes(b"same bytes")
    assert first == (first[0], False) and second == (first[0], True)
    assert blob_files(store) == [blob_path(store, first[0].digest)]
    assert tmp_files(store) == []


def test_expected_digest_mismatch_stores_nothing(store: BlobStore) -> None:
    wrong = blake3.blake3(b"other").hexdigest()
    with pytest.raises(DigestMismatchError) as caught, store.writer(expected_digest=wrong) as w:
        w.write(b"payload")
        w.commit()
    actual = blake3.blake3(b"payload").hexdigest()
    assert caught.value.code is Code.INVALID_ARGUMENT and caught.value.reason == "DIGEST_MISMATCH"
    assert caught.value.metadata == {"expected": wrong, "actual": actual}
    assert blob_files(store) == [] and tmp_files(store) == []
    with pytest.raises(BlobNotFoundError):
        store.stat(actual)


def test_expected_size_mismatch(store: BlobStore) -> None:
    with pytest.raises(DigestMismatchError) as caught, store.writer(expected_size=10) as w:
        w.write(b"short")
        w.commit()
    assert caught.value.metadata == {"expected_size": "10", "actual_size": "5"}
    with pytest.raises(TooLargeError) as too_long, store.writer(expected_size=3) as w:
        w.write(b"longer")
    assert too_long.value.metadata == {"limit_bytes": "3"}
    assert blob_files(store) == [] and tmp_files(store) == []


def test_too_large(tmp_path: Path) -> None:
    small = BlobStore(tmp_path, max_blob_bytes=1000)
    w = small.writer()
    w.write(b"x" * 600)
    with pytest.raises(TooLargeError) as caught:
        w.write(b"x" * 600)
    assert caught.value.code is Code.INVALID_ARGUMENT and caught.value.reason == "TOO_LARGE"
    assert caught.value.metadata == {"limit_bytes": "1000"}
    assert tmp_files(small) == []
    with pytest.raises(RuntimeError):
        w.commit()
    with pytest.raises(TooLargeError):
        small.put_bytes(b"y" * 1001)
    with pytest.raises(TooLargeError):
        small.writer(expected_size=1001)
    assert small.put_bytes(b"z" * 1000)[0].size_bytes == 1000
    assert tmp_files(small) == []


@pytest.mark.parametrize(
    "digest", ["", "abc", "A" * 64, "g" * 64, "a" * 63, "a" * 65, "a" * 64 + "\n", " " + "a" * 63]
)
def test_invalid_digest(store: BlobStore, digest: str) -> None:
    for call in (store.stat, store.read_bytes, store.open_verified):
        with pytest.raises(InvalidDigestError) as caught:
            call(digest)
        assert caught.value.code is Code.INVALID_ARGUMENT
        assert caught.value.reason == "INVALID_DIGEST"
    with pytest.raises(InvalidDigestError):
        store.writer(expected_digest=digest)
    assert tmp_files(store) == []


def test_missing_blob(store: BlobStore) -> None:
    digest = blake3.blake3(b"never stored").hexdigest()
    with pytest.raises(BlobNotFoundError) as caught:
        store.stat(digest)
    assert caught.value.code is Code.NOT_FOUND and caught.value.reason == "BLOB_NOT_FOUND"
    assert caught.value.metadata == {"digest": digest}
    with pytest.raises(BlobNotFoundError):
        store.read_bytes(digest)
    got, exc = drain(store.open_verified(digest))
    assert got == [] and isinstance(exc, BlobNotFoundError)


@pytest.mark.parametrize("where", ["start", "middle", "last"])
@pytest.mark.parametrize("size", [100, 3 * MIB])
def test_flipped_payload_byte(store: BlobStore, where: str, size: int) -> None:
    info, _ = store.put_bytes(os.urandom(size))
    path = blob_path(store, info.digest)
    offset = {"start": HEADER_BYTES, "middle": None, "last": info.stored_size_bytes - 1}[where]
    offset = offset if offset is not None else (HEADER_BYTES + info.stored_size_bytes) // 2
    raw = path.read_bytes()
    patch(path, offset, bytes([raw[offset] ^ 0x01]))
    assert store.stat(info.digest) == info  # the header alone still looks fine
    assert_damaged(store, info.digest)


@pytest.mark.parametrize("keep", [0, 10, HEADER_BYTES, HEADER_BYTES + 5, -1, "half"])
def test_truncated(store: BlobStore, keep: int | str) -> None:
    info, _ = store.put_bytes(os.urandom(2 * MIB))
    path = blob_path(store, info.digest)
    length = info.stored_size_bytes // 2 if keep == "half" else int(keep) % info.stored_size_bytes
    os.truncate(path, length)
    with pytest.raises(BlobIntegrityError):
        store.stat(info.digest)
    assert_damaged(store, info.digest)


def test_appended_bytes(store: BlobStore) -> None:
    info, _ = store.put_bytes(b"complete" * 100)
    with blob_path(store, info.digest).open("ab") as fh:
        fh.write(b"\x00" * 8)
    with pytest.raises(BlobIntegrityError):
        store.stat(info.digest)
    assert_damaged(store, info.digest)


@pytest.mark.parametrize(
    ("offset", "data"),
    [
        (0, b"X"),  # magic
        (7, b"\x03"),  # format version (unknown)
        (7, b"\x01"),  # format version (format 1 has a shorter header)
        (8, struct.pack("<Q", 2 * MIB - 1)),  # size too small
        (8, struct.pack("<Q", 2 * MIB + 1)),  # size too large
        (8, struct.pack("<Q", 1 << 40)),  # size over max_blob_bytes
        (16, struct.pack("<H", 0)),  # codec: raw, but the body is a zstd frame
        (16, struct.pack("<H", 9)),  # codec (unknown)
        (18, struct.pack("<H", 1)),  # flags (unknown)
        (24, b"\x00" * 32),  # digest
        (56, struct.pack("<Q", 12)),  # frame size
    ],
)
def test_corrupt_header(store: BlobStore, offset: int, data: bytes) -> None:
    info, _ = store.put_bytes(os.urandom(2 * MIB))
    patch(blob_path(store, info.digest), offset, data)
    assert_damaged(store, info.digest)


def test_swapped_files(store: BlobStore) -> None:
    a, _ = store.put_bytes(b"content a" * 1000)
    b, _ = store.put_bytes(b"content b" * 1000)
    b_bytes = blob_path(store, b.digest).read_bytes()
    blob_path(store, a.digest).write_bytes(b_bytes)
    with pytest.raises(BlobIntegrityError):
        store.stat(a.digest)
    assert_damaged(store, a.digest)
    # Even with the header rewritten to claim the name, b's payload is not served as a.
    patch(blob_path(store, a.digest), 20, bytes.fromhex(a.digest))
    assert_damaged(store, a.digest)
    assert store.read_bytes(b.digest) == b"content b" * 1000


def test_decompression_bomb(store: BlobStore) -> None:
    claimed = b"0123456789"
    digest = blake3.blake3(claimed).hexdigest()
    bomb = zstandard.ZstdCompressor().compress(b"\x00" * (64 * MIB))
    path = blob_path(store, digest)
    path.parent.mkdir(parents=True)
    header = HEADER_V1.pack(b"TWBLOB\x00\x01", len(claimed), 3, bytes.fromhex(digest), len(bomb))
    path.write_bytes(header + bomb)
    assert store.stat(digest).size_bytes == len(claimed)
    assert_damaged(store, digest)


def test_file_changed_between_passes(store: BlobStore) -> None:
    info, _ = store.put_bytes(os.urandom(3 * MIB))
    chunks = store.open_verified(info.digest)
    first = next(chunks)  # the whole blob verified; the second pass is under way
    assert len(first) == MIB
    tail = info.stored_size_bytes - 100
    patch(blob_path(store, info.digest), tail, os.urandom(50))
    got, exc = drain(chunks)
    assert isinstance(exc, BlobIntegrityError)
    assert len(got) <= 2


def open_fds_to(path: Path) -> int:
    fd_dir = Path("/proc/self/fd")
    return sum(1 for fd in fd_dir.iterdir() if os.path.realpath(fd) == str(path.resolve()))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_iterator_closes_its_file(store: BlobStore) -> None:
    info, _ = store.put_bytes(os.urandom(3 * MIB))
    path = blob_path(store, info.digest)
    chunks = store.open_verified(info.digest)
    next(chunks)
    assert open_fds_to(path) == 1
    chunks.close()  # type: ignore[attr-defined]
    assert open_fds_to(path) == 0
    assert len(list(store.open_verified(info.digest))) == 3
    assert open_fds_to(path) == 0


def test_abort_leaves_nothing(store: BlobStore) -> None:
    w = store.writer()
    w.write(b"abandoned")
    assert len(tmp_files(store)) == 1
    w.abort()
    w.abort()
    assert tmp_files(store) == []
    with store.writer() as w:
        w.write(b"no commit")
    with pytest.raises(ValueError, match="boom"), store.writer() as w:
        w.write(b"failed upload")
        raise ValueError("boom")
    assert tmp_files(store) == [] and blob_files(store) == []
    with pytest.raises(RuntimeError):
        w.write(b"more")


def test_stale_tmp_removed_on_open(tmp_path: Path) -> None:
    first = BlobStore(tmp_path)
    info, _ = first.put_bytes(b"kept")
    (tmp_path / "tmp" / "blob-crashed.part").write_bytes(b"half an upload")
    in_flight = first.writer()
    in_flight.write(b"in flight when the process died")
    assert len(tmp_files(first)) == 2
    second = BlobStore(tmp_path)
    assert tmp_files(second) == []
    assert second.read_bytes(info.digest) == b"kept"
    in_flight.abort()  # its temp file is already gone; only the descriptor is closed


@pytest.mark.parametrize("offset", [0, HEADER_BYTES + 3])
def test_damaged_copy_replaced_on_put(store: BlobStore, offset: int) -> None:
    data = os.urandom(1000)
    info, _ = store.put_bytes(data)
    patch(blob_path(store, info.digest), offset, b"JUNK")
    assert_damaged(store, info.digest)
    assert store.put_bytes(data) == (info, False)
    assert store.read_bytes(info.digest) == data
    assert store.put_bytes(data) == (info, True)


def test_abort_after_commit_is_a_no_op(store: BlobStore) -> None:
    w = store.writer(expected_size=4)
    w.write(b"kept")
    info, _ = w.commit()
    w.abort()
    assert store.read_bytes(info.digest) == b"kept"
    with pytest.raises(RuntimeError):
        w.commit()


def test_negative_expected_size(store: BlobStore) -> None:
    with pytest.raises(InvalidArgumentError):
        store.writer(expected_size=-1)
    assert tmp_files(store) == []


def test_concurrent_puts_of_same_content(store: BlobStore) -> None:
    data = os.urandom(2 * MIB)
    barrier = threading.Barrier(8)
    results: list[tuple[BlobInfo, bool]] = []
    failures: list[BaseException] = []

    def put() -> None:
        try:
            with store.writer(expected_size=len(data)) as w:
                for offset in range(0, len(data), 256 * 1024):
                    w.write(data[offset : offset + 256 * 1024])
                barrier.wait()
                results.append(w.commit())
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert {info for info, _ in results} == {results[0][0]}
    assert sorted(dedup for _, dedup in results) == [False] + [True] * 7
    assert blob_files(store) == [blob_path(store, results[0][0].digest)]
    assert tmp_files(store) == []
    assert store.read_bytes(results[0][0].digest) == data


def test_check(store: BlobStore) -> None:
    store.check()
    for path in tmp_files(store):
        path.unlink()
    (store.root / "tmp").rmdir()
    with pytest.raises(OSError):
        store.check()


def test_invalid_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        BlobStore(tmp_path, compression_level=0)
    with pytest.raises(ValueError):
        BlobStore(tmp_path, chunk_bytes=0)


def test_declared_size_over_the_cap_is_refused_before_decompressing(store: BlobStore) -> None:
    info, _ = store.put_bytes(os.urandom(1000))
    patch(blob_path(store, info.digest), 8, struct.pack("<Q", store.max_blob_bytes + 1))
    with pytest.raises(BlobIntegrityError, match="declared size over max_blob_bytes"):
        store.stat(info.digest)
    with pytest.raises(BlobIntegrityError, match="declared size over max_blob_bytes"):
        store.verify(info.digest)
    assert_damaged(store, info.digest)


def test_declared_size_over_the_cap_is_refused_before_a_temp_file(store: BlobStore) -> None:
    with pytest.raises(TooLargeError) as caught:
        store.writer(expected_size=store.max_blob_bytes + 1)
    assert caught.value.metadata == {"limit_bytes": str(store.max_blob_bytes)}
    with pytest.raises(TooLargeError):
        store.check_upload(None, store.max_blob_bytes + 1)
    store.check_upload(None, store.max_blob_bytes)
    assert tmp_files(store) == []


def test_verify(store: BlobStore) -> None:
    info, _ = store.put_bytes(os.urandom(3 * MIB))
    assert store.verify(info.digest) == info
    patch(blob_path(store, info.digest), info.stored_size_bytes - 1, b"\xff")
    with pytest.raises(BlobIntegrityError):
        store.verify(info.digest)


def test_install_hook_runs_for_new_and_deduplicated_blobs(store: BlobStore) -> None:
    seen: list[tuple[BlobInfo, bool]] = []

    def hook(info: BlobInfo) -> None:
        seen.append((info, blob_path(store, info.digest).is_file()))

    for _ in range(2):
        with store.writer(on_install=hook) as writer:
            writer.write(b"hooked")
            info, _ = writer.commit()
    assert seen == [(info, True), (info, True)]


def test_a_failing_install_hook_fails_the_commit_but_keeps_the_blob(store: BlobStore) -> None:
    def hook(info: BlobInfo) -> None:
        raise ValueError("index is down")

    with pytest.raises(ValueError, match="index is down"), store.writer(on_install=hook) as w:
        w.write(b"installed anyway")
        w.commit()
    assert tmp_files(store) == []
    assert store.read_bytes(blake3.blake3(b"installed anyway").hexdigest()) == b"installed anyway"


def test_digests_lists_only_blob_files(store: BlobStore) -> None:
    infos = [store.put_bytes(os.urandom(10))[0] for _ in range(5)]
    (store.root / "blobs" / "zz").mkdir()
    (store.root / "blobs" / "zz" / ("a" * 64)).write_bytes(b"wrong prefix")
    (store.root / "blobs" / "notes.txt").write_text("stray")
    assert list(store.digests()) == sorted(i.digest for i in infos)


def test_remove_if(store: BlobStore) -> None:
    info, _ = store.put_bytes(b"doomed")
    assert store.remove_if(info.digest, lambda: False) is False
    assert store.read_bytes(info.digest) == b"doomed"
    assert store.remove_if(info.digest, lambda: True) is True
    assert not blob_path(store, info.digest).exists()
    assert store.remove_if(info.digest, lambda: True) is True  # already gone: no error
    with pytest.raises(InvalidDigestError):
        store.remove_if("../etc", lambda: True)


def test_path_of(store: BlobStore) -> None:
    digest = blake3.blake3(b"p").hexdigest()
    assert store.path_of(digest) == blob_path(store, digest)
    with pytest.raises(InvalidDigestError):
        store.path_of("A" * 64)
