"""Durable content-addressed blobs: BLAKE3-named, zstd or raw, verified on read.

Where the blob files live is a `BlobBackend` (`backends/`): a local directory (the default,
``<root>/blobs/<digest[:2]>/<digest>``) or an S3-compatible bucket. A digest is BLAKE3-256
of the plaintext in lowercase hex. A writer spools the blob file in the backend's spool
directory (placeholder header first, the real one last, fsynced), then the backend installs
it whole and write-once: a blob is whole or absent after a crash. The spool directory is
emptied when a store opens, so one root belongs to one process. Who holds a blob is not
recorded here but in the index (see `blob_index`, `object_store`).

Blob file, format 2 (written today): a 64-byte little-endian header, then the body:

    0   magic b"TWBLOB\\x00" + format version byte 2    24  BLAKE3 digest, 32 raw bytes
    8   plaintext size, u64                            56  body size, u64
    16  codec, u16: 0 raw, 1 zstd                      64  the body: the plaintext itself
    18  flags, u16, must be 0                              (raw, body size = plaintext size)
    20  zstd level used, i32 (informational; 0 raw)        or one zstd frame with checksum

Format 1 (read, never written): a 60-byte header, magic version byte 1, plaintext size u64,
level i32, digest, frame size u64, then always one zstd frame. The writer chooses the codec
(`Codec`, zstd by default); the snapshot service stores records raw, their payload being
zstd already. Whatever the codec, every read hashes the plaintext against the digest.
"""

from __future__ import annotations

import enum
import os
import struct
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import blake3
import zstandard
from tensorwasm_common.errors import (
    BlobIntegrityError,
    InvalidArgumentError,
    InvalidDigestError,
    TooLargeError,
)

from tensorwasm_snapshot import errors
from tensorwasm_snapshot.backends import BlobBackend, LocalBackend
from tensorwasm_snapshot.backends.local import DIGEST_RE

_MAGIC_PREFIX = b"TWBLOB\x00"
_MAGIC_V1, _HEADER_V1 = _MAGIC_PREFIX + b"\x01", struct.Struct("<8sQi32sQ")
_MAGIC, _HEADER = _MAGIC_PREFIX + b"\x02", struct.Struct("<8sQHHi32sQ")
_INSTALL_LOCKS = tuple(threading.Lock() for _ in range(256))  # one per two-hex digest prefix

# Called with the digest's lock held once a blob is installed or found already stored, so
# that a collector taking the same lock (`remove_if`) never deletes what a put just returned.
InstallHook = Callable[["BlobInfo"], None]
# The lock of a digest: held by an install and by the collection of that digest's blob.
DigestLock = Callable[[str], AbstractContextManager[object]]


def process_digest_lock(digest: str) -> AbstractContextManager[object]:
    """The default `DigestLock`: one lock per two-hex digest prefix, in this process."""
    return _INSTALL_LOCKS[int(digest[:2], 16)]


def validate_digest(digest: object) -> str:
    """Returns `digest` if it is 64 lowercase hex digits, else raises InvalidDigestError."""
    if not isinstance(digest, str) or DIGEST_RE.fullmatch(digest) is None:
        raise InvalidDigestError.of(digest)
    return digest


class Codec(enum.IntEnum):
    """How a blob's body holds its plaintext (format 2 header, offset 16)."""

    RAW = 0  # the plaintext itself: for bytes that do not compress (a zstd record, say)
    ZSTD = 1  # one zstd frame with its content checksum, at the store's level


@dataclass(frozen=True)
class _Header:
    info: BlobInfo
    codec: Codec
    body_offset: int


@dataclass(frozen=True)
class BlobInfo:
    """A committed blob: digest, plaintext size, and on-disk size (header plus body)."""

    digest: str
    size_bytes: int
    stored_size_bytes: int


class BlobStore:
    """Immutable blobs named by digest, safe from many threads; `chunk_bytes` sizes reads."""

    def __init__(
        self,
        root: Path,
        *,
        backend: BlobBackend | None = None,
        compression_level: int = 3,
        max_blob_bytes: int = 256 << 20,
        chunk_bytes: int = 1 << 20,
    ) -> None:
        """Opens the store whose local working directory is `root` (the blob files are in
        `backend`, by default a `LocalBackend` on `root`) and deletes stale spool files."""
        if not (1 <= compression_level <= 22 and max_blob_bytes >= 0 and chunk_bytes >= 1):
            raise ValueError("need 1 <= compression_level <= 22, max_blob_bytes >= 0, chunk >= 1")
        self.root, self.compression_level = Path(root), compression_level
        self.max_blob_bytes, self.chunk_bytes = max_blob_bytes, chunk_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self.backend: BlobBackend = LocalBackend(self.root) if backend is None else backend
        # Replaced by the index's lock when several processes share the backend.
        self.digest_lock: DigestLock = process_digest_lock
        self._tmp = self.spool_dir = self.backend.spool_dir
        for entry in os.scandir(self._tmp):  # exhausting the iterator closes it
            if not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)

    def writer(
        self,
        *,
        expected_digest: str | None = None,
        expected_size: int | None = None,
        on_install: InstallHook | None = None,
        codec: Codec = Codec.ZSTD,
    ) -> BlobWriter:
        """Starts an upload (a context manager) whose `commit()` checks the expected digest/size.

        `codec` is how the body is kept at rest if this upload installs it (a deduplicated
        put keeps the stored copy as it is). Raises TooLargeError before anything is written
        when `expected_size` is over the cap.
        """
        self.check_upload(expected_digest, expected_size)
        return BlobWriter(self, expected_digest, expected_size, on_install, Codec(codec))

    def check_upload(self, expected_digest: str | None, expected_size: int | None) -> None:
        """Raises what `writer()` would raise for these expectations, without a temp file."""
        if expected_digest is not None:
            validate_digest(expected_digest)
        if expected_size is not None and expected_size < 0:
            raise InvalidArgumentError("expected_size must be >= 0")
        if (expected_size or 0) > self.max_blob_bytes:
            raise TooLargeError.of(self.max_blob_bytes)

    def stat(self, digest: str) -> BlobInfo:
        """Describes a blob from its header; BlobIntegrityError if the header is damaged."""
        return self._head(validate_digest(digest)).info

    def codec(self, digest: str) -> Codec:
        """How the blob is kept at rest (zstd for every format-1 file), from its header."""
        return self._head(validate_digest(digest)).codec

    def open_verified(self, digest: str) -> Iterator[bytes]:
        """Returns an iterator of `chunk_bytes` plaintext pieces that never yields a damaged byte.

        Its first `next()` verifies the whole blob in constant memory (BlobNotFoundError,
        BlobIntegrityError); a second pass then yields, re-hashing, raising at the end if changed.
        """
        return self._verified(validate_digest(digest))

    def verify(self, digest: str) -> BlobInfo:
        """Decodes a whole blob in constant memory; its info if it is intact, else raises."""
        with self.backend.open(validate_digest(digest)) as fh:
            header = self._header(digest, fh)
            deque(self._decode(digest, fh, header), maxlen=0)
        return header.info

    def read_bytes(self, digest: str) -> bytes:
        """Returns a whole verified blob, decoded once (memory grows with its size)."""
        with self.backend.open(validate_digest(digest)) as fh:
            return b"".join(self._decode(digest, fh, self._header(digest, fh)))

    def put_bytes(self, data: bytes, *, codec: Codec = Codec.ZSTD) -> tuple[BlobInfo, bool]:
        """Stores `data`; returns its info and True if it was already stored (deduplicated)."""
        with self.writer(codec=codec) as blob_writer:
            blob_writer.write(data)
            return blob_writer.commit()

    def check(self) -> None:
        """Health check: raises unless the backend can store and read blobs."""
        self.backend.check()

    def digests(self) -> Iterator[str]:
        """The digests of the stored blob files, intact or not (others are skipped)."""
        return self.backend.digests()

    def remove_if(self, digest: str, condition: Callable[[], bool]) -> bool:
        """Deletes a blob durably if `condition()`, asked with the digest's lock held, is true.

        The lock is the one installs take, so a put that returned this blob either ran before
        (and `condition` sees what it recorded) or runs after, and stores the blob again.
        """
        validate_digest(digest)
        with self.digest_lock(digest):
            if not condition():
                return False
            self.backend.delete(digest)
        return True

    def path_of(self, digest: str) -> Path:
        """Where the blob of `digest` lives on a local backend (whether or not it exists)."""
        if not isinstance(self.backend, LocalBackend):
            raise TypeError("blobs are not local files on this backend")
        return self.backend.path_of(digest)

    def _head(self, digest: str) -> _Header:
        raw, stored = self.backend.read_head(digest, _HEADER.size)
        return self._parse_header(digest, raw, stored)

    def _header(self, digest: str, fh: BinaryIO) -> _Header:
        fh.seek(0)
        raw = fh.read(_HEADER.size)
        return self._parse_header(digest, raw, os.fstat(fh.fileno()).st_size)

    def _parse_header(self, digest: str, raw: bytes, stored: int) -> _Header:
        raw = raw.ljust(_HEADER.size, b"\0")  # then the file size check fails
        if raw[:8] == _MAGIC:
            _magic, size, codec, flags, _level, raw_digest, body_size = _HEADER.unpack(raw)
            header_size = _HEADER.size
        elif raw[:8] == _MAGIC_V1:
            _magic, size, _level, raw_digest, body_size = _HEADER_V1.unpack(raw[: _HEADER_V1.size])
            codec, flags, header_size = Codec.ZSTD, 0, _HEADER_V1.size
        else:
            raise BlobIntegrityError(digest, "bad magic or unknown format version")
        if raw_digest.hex() != digest or stored != header_size + body_size:
            raise BlobIntegrityError(digest, "bad digest or file size")
        if flags or codec not in {c.value for c in Codec}:
            raise BlobIntegrityError(digest, f"unknown codec {codec} or flags {flags}")
        if codec == Codec.RAW and body_size != size:
            raise BlobIntegrityError(digest, "raw body size is not the plaintext size")
        if size > self.max_blob_bytes:  # the bomb guard: refused before decompressing a byte
            raise BlobIntegrityError(digest, "declared size over max_blob_bytes")
        return _Header(BlobInfo(digest, size, stored), Codec(codec), header_size)

    def _verified(self, digest: str) -> Iterator[bytes]:
        # One handle for both passes: a remote blob is downloaded once, and a local one
        # being collected meanwhile is still read whole through its open file.
        with self.backend.open(digest) as fh:
            header = self._header(digest, fh)
            tail = deque(self._decode(digest, fh, header), maxlen=2)  # a lone piece is kept
            yield from tail if len(tail) < 2 else self._decode(digest, fh, header)

    def _decode(self, digest: str, fh: BinaryIO, header: _Header) -> Iterator[bytes]:
        # Yields the plaintext; raises BlobIntegrityError, at the end at the latest, if bad.
        size, hasher, total = header.info.size_bytes, blake3.blake3(), 0
        fh.seek(header.body_offset)
        try:
            for piece in self._body(fh, header.codec):
                total += len(piece)
                if total > size:  # also the decompression-bomb guard
                    raise BlobIntegrityError(digest, "more plaintext than declared")
                hasher.update(piece)
                yield piece
        except zstandard.ZstdError as exc:
            raise BlobIntegrityError(digest, f"zstd: {exc}") from exc
        if total != size or hasher.hexdigest() != digest:
            raise BlobIntegrityError(digest, "plaintext size or digest mismatch")

    def _body(self, fh: BinaryIO, codec: Codec) -> Iterator[bytes]:
        # The body's plaintext in pieces of at most `chunk_bytes`, unverified.
        if codec == Codec.RAW:
            while piece := fh.read(self.chunk_bytes):
                yield piece
            return
        dctx = zstandard.ZstdDecompressor()
        with dctx.stream_reader(fh, read_across_frames=True, closefd=False) as reader:
            while piece := reader.read(self.chunk_bytes):
                yield piece

    def _install(
        self, tmp_path: Path, info: BlobInfo, on_install: InstallHook | None
    ) -> tuple[BlobInfo, bool]:
        with self.digest_lock(info.digest):
            try:
                result = info, False
                if not self.backend.install(tmp_path, info.digest):
                    try:
                        result = self.verify(info.digest), True
                    except (BlobIntegrityError, errors.BlobNotFoundError):  # damaged, or gone
                        self.backend.install(tmp_path, info.digest, replace=True)
            finally:
                tmp_path.unlink(missing_ok=True)
            if on_install is not None:
                on_install(result[0])
        return result


class BlobWriter:
    """One streaming upload into a temp file, used by one thread at a time."""

    def __init__(
        self,
        store: BlobStore,
        digest: str | None,
        size: int | None,
        on_install: InstallHook | None = None,
        codec: Codec = Codec.ZSTD,
    ) -> None:
        """Opens a temp file under the store's ``tmp/``; prefer `BlobStore.writer()`."""
        self._store, self._want_digest, self._want_size = store, digest, size
        self._codec = codec
        self._on_install = on_install
        self._limit = store.max_blob_bytes if size is None else size
        self._size, self._done, self._hasher = 0, False, blake3.blake3()
        fd, name = tempfile.mkstemp(dir=store._tmp, prefix="blob-", suffix=".part")
        self._tmp_path, self._file = Path(name), os.fdopen(fd, "wb")
        self._file.write(bytes(_HEADER.size))  # placeholder, rewritten by commit()
        self._cobj: zstandard.ZstdCompressionObj | None = None
        if codec == Codec.ZSTD:
            cctx = zstandard.ZstdCompressor(level=store.compression_level, write_checksum=True)
            self._cobj = cctx.compressobj()

    def write(self, chunk: bytes) -> None:
        """Hashes and stores (compressing, with zstd) more plaintext; TooLargeError (and
        abort) past the limit."""
        if self._done:
            raise RuntimeError("blob writer already committed or aborted")
        if self._size + len(chunk) > self._limit:
            self.abort()
            raise TooLargeError.of(self._limit)
        self._size += len(chunk)
        self._hasher.update(chunk)
        self._file.write(chunk if self._cobj is None else self._cobj.compress(chunk))

    def commit(self) -> tuple[BlobInfo, bool]:
        """Checks size/digest (DigestMismatchError), installs durably; -> (info, deduplicated)."""
        if self._done:
            raise RuntimeError("blob writer already committed or aborted")
        try:
            if self._cobj is not None:
                self._file.write(self._cobj.flush())
            digest, size = self._hasher.hexdigest(), self._size
            if self._want_size is not None and size != self._want_size:
                raise errors.DigestMismatchError(expected_size=self._want_size, actual_size=size)
            if self._want_digest is not None and digest != self._want_digest:
                raise errors.DigestMismatchError(expected=self._want_digest, actual=digest)
            info = BlobInfo(digest, size, self._file.tell())
            self._file.seek(0)
            level = self._store.compression_level if self._codec == Codec.ZSTD else 0
            body_size = info.stored_size_bytes - _HEADER.size
            self._file.write(
                _HEADER.pack(_MAGIC, size, self._codec, 0, level, bytes.fromhex(digest), body_size)
            )
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            result = self._store._install(self._tmp_path, info, self._on_install)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return result

    def abort(self) -> None:
        """Discards the upload and its temp file; a no-op once committed or aborted."""
        if not self._done:
            self._done = True
            try:
                self._file.close()
            finally:
                self._tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()  # a no-op after commit(); an escaping exception cannot undo a commit
