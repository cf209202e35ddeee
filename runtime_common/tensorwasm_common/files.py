"""Crash-safe file writes shared by the services' local caches, and files sealed with a
BLAKE3 digest kept beside them (`<name>.blake3`) for caches whose files are mapped as trusted
code or state (compiled modules, instance images): they are checked before use."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import blake3

__all__ = [
    "DIGEST_SUFFIX", "TEMP_PREFIX", "digest_path", "evict_least_recent", "remove_sealed",
    "seal_is_intact", "write_atomically", "write_sealed",
]  # fmt: skip

# Temporary files are named `.tmp-*` next to their target (a reader of the directory skips them).
TEMP_PREFIX = ".tmp-"
# A sealed file's digest lives in `<name>.blake3`: 64 lowercase hex digits and a newline.
DIGEST_SUFFIX = ".blake3"


def write_atomically(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Writes `data` to `path` so that a crash at any point leaves the old state (no file,
    or the previous one) or the whole new file: temp file in the same directory, fsync,
    rename over `path`, fsync of the directory. Missing parent directories are created.

    Raises:
        OSError: the directory cannot be created or written (the temp file is removed).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TEMP_PREFIX, suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def digest_path(path: Path) -> Path:
    """Where the digest of the sealed file `path` is kept."""
    return path.with_name(path.name + DIGEST_SUFFIX)


def write_sealed(path: Path, data: bytes | bytearray | memoryview) -> None:
    """Writes `data` to `path` atomically, then its BLAKE3 digest to `digest_path(path)`.

    The file is written first: a crash between the two leaves a file whose digest is missing
    or stale, which `seal_is_intact` refuses, never an intact-looking damaged file.

    Raises:
        OSError: as for `write_atomically`.
    """
    digest = blake3.blake3(data).hexdigest()
    digest_path(path).unlink(missing_ok=True)  # no moment where an old digest vouches
    write_atomically(path, data)
    write_atomically(digest_path(path), (digest + "\n").encode())


def seal_is_intact(path: Path) -> bool:
    """True when `path` and its digest file exist and the file's BLAKE3 matches the digest.

    The file is hashed through a memory map (no copy on the heap); any read error is False.
    """
    try:
        recorded = digest_path(path).read_bytes().strip().decode("ascii")
        hasher = blake3.blake3()
        if path.stat().st_size > 0:
            hasher.update_mmap(path)
    except (OSError, UnicodeDecodeError):
        return False
    return len(recorded) == 64 and hasher.hexdigest() == recorded


def remove_sealed(path: Path) -> None:
    """Deletes a sealed file and its digest (either may be absent)."""
    path.unlink(missing_ok=True)
    digest_path(path).unlink(missing_ok=True)


def evict_least_recent(directory: Path, suffix: str, max_bytes: int, *, keep: Path) -> int:
    """Removes the sealed files named `*<suffix>` of `directory`, least recently modified
    first (a cache touches a file it uses), never `keep`, until they hold at most
    `max_bytes` in all; returns how many it removed. Writes in flight are skipped. A file
    being mapped stays valid: on Linux an unlinked file lives on while it is mapped."""
    files = []
    for entry in os.scandir(directory):
        if entry.name.startswith(TEMP_PREFIX) or not entry.name.endswith(suffix):
            continue  # a write in flight, or a digest file
        if entry.is_file(follow_symlinks=False):
            stat = entry.stat(follow_symlinks=False)
            files.append((stat.st_mtime_ns, stat.st_size, Path(entry.path)))
    total = sum(size for _, size, _ in files)
    removed = 0
    for _, size, path in sorted(files):
        if total <= max_bytes:
            break
        if path != keep:
            remove_sealed(path)
            total -= size
            removed += 1
    return removed
