"""write_atomically: the whole new file or the old state, never a part, never a temp left."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tensorwasm_common.files import TEMP_PREFIX, write_atomically


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_writes_the_file_creating_its_directory_and_replaces_an_old_one(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "image.twimg"
    write_atomically(target, b"first")
    assert target.read_bytes() == b"first"
    write_atomically(target, bytearray(b"second, longer"))
    assert target.read_bytes() == b"second, longer"
    write_atomically(target, memoryview(b"3"))
    assert target.read_bytes() == b"3"
    assert leftovers(target.parent) == []


def test_a_failure_before_the_rename_keeps_the_old_file_and_removes_the_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "artifact.cwasm"
    write_atomically(target, b"old")

    def refuse(src: str, dst: str) -> None:
        assert Path(src).read_bytes() == b"new"  # the temp was complete before the rename
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(target, b"new")
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_an_unwritable_directory_raises_oserror(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(OSError):
        write_atomically(blocker / "x.bin", b"data")  # a file where a directory must be
    assert os.listdir(tmp_path) == ["file"]
