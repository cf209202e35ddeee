"""The snapshot record file, format version 1 (docs/SNAPSHOT_FORMAT.md): encode and verify.

    preamble  16 B   magic b"\\x89TWSNAP\\n", format version u16, flags u16, header size u32
    header    N B    kind u16, 2 zero bytes, create time ns i64, payload size u64,
                     payload digest 32 B, source digest 32 B, frame size u64,
                     then engine fingerprint, tenant, variant: each u16 length + UTF-8
    frame     F B    the payload as one zstd frame (with its content checksum)
    mac       32 B   HMAC-SHA256 over everything before it; only when flags bit 0 is set

All integers little-endian. A reader checks the preamble, then the signature (with a key),
then the header and the file size, and decompresses only after all of these passed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path

import blake3
import zstandard
from tensorwasm_common.errors import (
    SnapshotCorruptError,
    SnapshotSignatureError,
    UnsupportedSnapshotFormatError,
)

MAGIC = b"\x89TWSNAP\n"
FORMAT_VERSION = 1
FLAG_SIGNED = 1
# = the SnapshotKind numbers
KINDS = {1: "compiled_module", 2: "instance_image", 3: "kernel", 4: "instance_state"}
MAC_BYTES = 32
MAX_STRING_BYTES = 1024
_PREAMBLE = struct.Struct("<8sHHI")
_FIXED = struct.Struct("<H2xqQ32s32sQ")
_U16 = struct.Struct("<H")
_SPOOL_BYTES = 8 << 20


@dataclasses.dataclass(frozen=True)
class RecordMeta:
    """What a record says about its payload (everything but the bytes)."""

    kind: int
    engine_fingerprint: str
    source_digest: str
    variant: str
    tenant: str
    create_time_ns: int
    payload_digest: str = ""
    payload_size_bytes: int = 0


@dataclasses.dataclass(frozen=True)
class ParsedRecord:
    """A record whose preamble, signature and header verified; the frame is not yet decoded."""

    meta: RecordMeta
    format_version: int
    signed: bool
    frame: memoryview


def encode_header(meta: RecordMeta, *, frame_size: int, signed: bool) -> bytes:
    """The preamble and header of a record whose zstd frame is `frame_size` bytes."""
    fixed = _FIXED.pack(
        meta.kind,
        meta.create_time_ns,
        meta.payload_size_bytes,
        bytes.fromhex(meta.payload_digest),
        bytes.fromhex(meta.source_digest),
        frame_size,
    )
    strings = b"".join(
        _U16.pack(len(raw)) + raw
        for raw in (s.encode() for s in (meta.engine_fingerprint, meta.tenant, meta.variant))
    )
    header = fixed + strings
    preamble = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, FLAG_SIGNED if signed else 0, len(header))
    return preamble + header


def encode(
    meta: RecordMeta, payload: bytes, *, signing_key: bytes | None = None, level: int = 3
) -> bytes:
    """A whole record in memory (tests, fixtures); `meta`'s digest and size are recomputed."""
    encoder = PayloadEncoder(level=level)
    try:
        encoder.write(payload)
        return b"".join(encoder.finish(meta, signing_key=signing_key).pieces())
    finally:
        encoder.close()


class PayloadEncoder:
    """Hashes and compresses a payload as it streams in; then emits the record in pieces.

    The compressed frame is spooled (memory, then a temp file under `spool_dir`) because the
    header, which precedes it, carries the payload digest known only at the end.
    """

    def __init__(
        self, *, level: int = 3, max_payload_bytes: int | None = None, spool_dir: Path | None = None
    ) -> None:
        """Starts an empty payload; `max_payload_bytes` makes `write` refuse more."""
        self._hasher, self._size, self._max = blake3.blake3(), 0, max_payload_bytes
        self._spool = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - closed by close()
            max_size=_SPOOL_BYTES,
            dir=None if spool_dir is None else str(spool_dir),
            prefix="snapshot-",
            suffix=".part",
        )
        cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
        self._cobj = cctx.compressobj()

    @property
    def size_bytes(self) -> int:
        """Payload bytes written so far."""
        return self._size

    def write(self, chunk: bytes) -> None:
        """Adds payload bytes; OverflowError past `max_payload_bytes`."""
        if self._max is not None and self._size + len(chunk) > self._max:
            raise OverflowError(self._max)
        self._size += len(chunk)
        self._hasher.update(chunk)
        self._spool.write(self._cobj.compress(chunk))

    def finish(self, meta: RecordMeta, *, signing_key: bytes | None = None) -> SealedRecord:
        """Seals the payload: the record of `meta` with this payload's digest and size."""
        self._spool.write(self._cobj.flush())
        frame_size = self._spool.tell()
        full = dataclasses.replace(
            meta, payload_digest=self._hasher.hexdigest(), payload_size_bytes=self._size
        )
        header = encode_header(full, frame_size=frame_size, signed=signing_key is not None)
        size = len(header) + frame_size + (MAC_BYTES if signing_key else 0)
        return SealedRecord(full, size, header, self._spool, signing_key)

    def close(self) -> None:
        """Discards the spooled frame."""
        self._spool.close()


class SealedRecord:
    """A record ready to be written: its meta, its exact size, and its bytes in pieces."""

    def __init__(
        self,
        meta: RecordMeta,
        size_bytes: int,
        header: bytes,
        spool: tempfile.SpooledTemporaryFile[bytes],
        signing_key: bytes | None,
    ) -> None:
        """Wraps the encoder's output; prefer `PayloadEncoder.finish`."""
        self.meta, self.size_bytes = meta, size_bytes
        self._header, self._spool, self._key = header, spool, signing_key

    def pieces(self, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
        """Header, frame in chunks, then the MAC when signing (at most once)."""
        mac = hmac.new(self._key, digestmod=hashlib.sha256) if self._key else None
        self._spool.seek(0)
        piece = self._header
        while piece:
            if mac is not None:
                mac.update(piece)
            yield piece
            piece = self._spool.read(chunk_bytes)
        if mac is not None:
            yield mac.digest()


def parse(
    record: bytes | memoryview, *, signing_key: bytes | None, max_payload_bytes: int
) -> ParsedRecord:
    """Checks preamble, signature, header and sizes, decompressing nothing.

    With `signing_key`, an unsigned or wrongly signed record is refused; without one, a
    signature is not checked (the store holding no key cannot verify it).

    Raises:
        SnapshotCorruptError: not a record (magic), truncated, or an inconsistent header.
        UnsupportedSnapshotFormatError: a format version or flag this code does not know.
        SnapshotSignatureError: a key is configured and the MAC is absent or wrong.
    """
    view = memoryview(record)
    if len(view) < _PREAMBLE.size:
        raise SnapshotCorruptError("snapshot record is truncated (no preamble)")
    magic, version, flags, header_size = _PREAMBLE.unpack_from(view)
    if magic != MAGIC:
        raise SnapshotCorruptError("not a snapshot record (bad magic)")
    if version != FORMAT_VERSION:
        raise UnsupportedSnapshotFormatError(
            f"snapshot format version {version} is not readable here (reads {FORMAT_VERSION})",
            metadata={"format_version": str(version)},
        )
    if flags & ~FLAG_SIGNED:
        raise UnsupportedSnapshotFormatError(
            f"unknown snapshot flags {flags:#06x}", metadata={"flags": str(flags)}
        )
    signed = bool(flags & FLAG_SIGNED)
    body_end = len(view) - (MAC_BYTES if signed else 0)
    if body_end < _PREAMBLE.size:
        raise SnapshotCorruptError("snapshot record is truncated (no signature)")
    if signing_key is not None:
        if not signed:
            raise SnapshotSignatureError(
                "snapshot record is unsigned; this store requires a signature"
            )
        expected = hmac.new(signing_key, view[:body_end], hashlib.sha256).digest()
        if not hmac.compare_digest(expected, bytes(view[body_end:])):
            raise SnapshotSignatureError("snapshot record signature does not verify")
    meta, frame_size = _header(view[_PREAMBLE.size : body_end], header_size)
    frame_start = _PREAMBLE.size + header_size
    if frame_start + frame_size != body_end:
        raise SnapshotCorruptError("snapshot record size does not match its header")
    if meta.payload_size_bytes > max_payload_bytes:  # the bomb guard, before decompressing
        raise SnapshotCorruptError("snapshot payload declares more than the store's cap")
    return ParsedRecord(meta, version, signed, view[frame_start:body_end])


def declared_size(record: bytes | memoryview) -> int | None:
    """The whole size a record's preamble and header declare, None when the bytes are too
    short (or too malformed) to say; a reader compares it with what it has to tell a
    truncated file from a damaged one."""
    view = memoryview(record)
    if len(view) < _PREAMBLE.size:
        return None
    magic, _, flags, header_size = _PREAMBLE.unpack_from(view)
    if magic != MAGIC or len(view) < _PREAMBLE.size + _FIXED.size:
        return None
    *_, frame_size = _FIXED.unpack_from(view, _PREAMBLE.size)
    mac = MAC_BYTES if flags & FLAG_SIGNED else 0
    return int(_PREAMBLE.size + header_size + frame_size + mac)


def _header(view: memoryview, header_size: int) -> tuple[RecordMeta, int]:
    if header_size > len(view) or header_size < _FIXED.size:
        raise SnapshotCorruptError("snapshot record is truncated (header)")
    kind, created, size, payload_raw, source_raw, frame_size = _FIXED.unpack_from(view)
    if kind not in KINDS:
        raise SnapshotCorruptError(f"snapshot record has unknown kind {kind}")
    offset, strings = _FIXED.size, []
    for _ in range(3):
        if offset + _U16.size > header_size:
            raise SnapshotCorruptError("snapshot record header is truncated")
        (length,) = _U16.unpack_from(view, offset)
        offset += _U16.size
        if offset + length > header_size or length > MAX_STRING_BYTES:
            raise SnapshotCorruptError("snapshot record header is truncated")
        try:
            strings.append(bytes(view[offset : offset + length]).decode())
        except UnicodeDecodeError:
            raise SnapshotCorruptError("snapshot record header is not UTF-8") from None
        offset += length
    if offset != header_size:
        raise SnapshotCorruptError("snapshot record header has trailing bytes")
    fingerprint, tenant, variant = strings
    meta = RecordMeta(
        kind, fingerprint, source_raw.hex(), variant, tenant, created, payload_raw.hex(), size
    )
    return meta, frame_size


def iter_payload(parsed: ParsedRecord, *, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
    """Decompresses the payload in chunks, stopping past its declared size; raises
    SnapshotCorruptError (at the end at the latest) unless size and digest match."""
    declared, total, hasher = parsed.meta.payload_size_bytes, 0, blake3.blake3()
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(parsed.frame, read_across_frames=True)
        with reader:
            while piece := reader.read(chunk_bytes):
                total += len(piece)
                if total > declared:
                    raise SnapshotCorruptError("snapshot payload is longer than declared")
                hasher.update(piece)
                yield piece
    except zstandard.ZstdError as exc:
        raise SnapshotCorruptError(f"snapshot payload does not decompress: {exc}") from exc
    if total != declared or hasher.hexdigest() != parsed.meta.payload_digest:
        raise SnapshotCorruptError("snapshot payload does not match its size or digest")


def verify_payload(parsed: ParsedRecord, *, chunk_bytes: int = 1 << 20) -> None:
    """Decompresses and hashes the whole payload in constant memory; raises if it is bad."""
    for _ in iter_payload(parsed, chunk_bytes=chunk_bytes):
        pass


def decode(
    record: bytes, *, signing_key: bytes | None = None, max_payload_bytes: int = 256 << 20
) -> tuple[ParsedRecord, bytes]:
    """Parses and verifies a whole record; -> (parsed record, payload)."""
    parsed = parse(record, signing_key=signing_key, max_payload_bytes=max_payload_bytes)
    return parsed, b"".join(iter_payload(parsed))
