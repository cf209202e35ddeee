"""Crash-safe file writes shared by the services' local caches."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["TEMP_PREFIX", "write_atomically"]

# Temporary files are named `.tmp-*` next to their target (a reader of the directory skips them).
TEMP_PREFIX = ".tmp-"


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
