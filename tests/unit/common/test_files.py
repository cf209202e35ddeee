"""write_atomically: the whole new file or the old state, never a part, never a temp left;
sealed files: trusted only while their BLAKE3 digest, kept beside them, matches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tensorwasm_common.files import (
    TEMP_PREFIX,
    digest_path,
    remove_sealed,
    seal_is_intact,
    write_atomically,
    write_sealed,
)


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


def test_a_sealed_file_is_intact_until_a_byte_or_its_digest_changes(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "module.cwasm"
    write_sealed(target, b"compiled code" * 1000)
    assert seal_is_intact(target)
    assert digest_path(target).name == "module.cwasm.blake3"
    data = bytearray(target.read_bytes())
    data[5000] ^= 1
    target.write_bytes(bytes(data))
    assert not seal_is_intact(target)
    write_sealed(target, b"")  # an empty file has a digest too
    assert seal_is_intact(target)
    digest_path(target).write_text("garbled")
    assert not seal_is_intact(target)
    digest_path(target).unlink()
    assert not seal_is_intact(target)  # a file without its digest is not trusted
    remove_sealed(target)
    assert not target.exists() and not digest_path(target).exists()
    assert not seal_is_intact(target)
