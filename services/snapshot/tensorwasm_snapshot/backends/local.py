"""Blob files in a local directory: `<root>/blobs/<digest[:2]>/<digest>`, spooled in `<root>/tmp/`.

The spool directory is on the same filesystem, so an install is one atomic rename: a temp
file fsynced, renamed into place, the directory fsynced (and `blobs/` for a new `<xx>/`), so
after a crash a blob is whole or absent.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from tensorwasm_common.errors import InvalidDigestError

from tensorwasm_snapshot import errors

DIGEST_RE = re.compile(r"[0-9a-f]{64}")


def fsync_dir(path: Path) -> None:
    """Makes a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBackend:
    """Blob files under `root`; one root belongs to one process (its `tmp/` is emptied)."""

    def __init__(self, root: Path) -> None:
        """Creates `root/blobs` and `root/tmp` if needed."""
        self.root = Path(root)
        self.blobs_dir, self.spool_dir = self.root / "blobs", self.root / "tmp"
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.spool_dir.mkdir(exist_ok=True)
        fsync_dir(self.root)  # make a new blobs/ durable

    def describe(self) -> str:
        """The directory."""
        return f"file://{self.root}"

    def check(self) -> None:
        """Raises OSError unless files can be created in `blobs/` and `tmp/`."""
        for directory in (self.blobs_dir, self.spool_dir):
            tempfile.TemporaryFile(dir=directory).close()

    def path_of(self, digest: str) -> Path:
        """Where the blob of `digest` lives (whether or not it exists)."""
        if not isinstance(digest, str) or DIGEST_RE.fullmatch(digest) is None:
            raise InvalidDigestError.of(digest)
        return self.blobs_dir / digest[:2] / digest

    def install(self, spooled: Path, digest: str, *, replace: bool = False) -> bool:
        """Renames `spooled` into place (atomically over a damaged copy with `replace`)."""
        final = self.path_of(digest)
        if not replace and final.exists():
            return False
        if not final.parent.is_dir():
            final.parent.mkdir(exist_ok=True)
            fsync_dir(self.blobs_dir)
        os.replace(spooled, final)
        fsync_dir(final.parent)
        return True

    def open(self, digest: str) -> BinaryIO:
        """The blob file, opened for reading."""
        try:
            return self.path_of(digest).open("rb")
        except FileNotFoundError:
            raise errors.BlobNotFoundError(digest) from None

    def read_head(self, digest: str, size: int) -> tuple[bytes, int]:
        """The file's first `size` bytes and its size."""
        with self.open(digest) as fh:
            return fh.read(size), os.fstat(fh.fileno()).st_size

    def delete(self, digest: str) -> None:
        """Unlinks the file and fsyncs its directory."""
        path = self.path_of(digest)
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)

    def digests(self) -> Iterator[str]:
        """Digest-named files in their own prefix directory, sorted."""
        for prefix in sorted(os.listdir(self.blobs_dir)):
            directory = self.blobs_dir / prefix
            if len(prefix) != 2 or not directory.is_dir():
                continue
            for name in sorted(os.listdir(directory)):
                if DIGEST_RE.fullmatch(name) and name[:2] == prefix:
                    yield name

    def modified_ns(self, digest: str) -> int:
        """The file's mtime."""
        return os.stat(self.path_of(digest)).st_mtime_ns
