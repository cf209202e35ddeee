"""Fixtures shared by every test directory: the WAT modules under tests/fixtures/wat."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import wasmtime

WAT_DIR = Path(__file__).parent / "fixtures" / "wat"


@pytest.fixture(scope="session")
def wat_dir() -> Path:
    """The directory of the WAT fixture modules."""
    return WAT_DIR


@pytest.fixture(scope="session")
def wasm() -> Callable[[str], bytes]:
    """Returns the binary module of tests/fixtures/wat/<name>.wat."""
    cache: dict[str, bytes] = {}

    def load(name: str) -> bytes:
        if name not in cache:
            cache[name] = bytes(wasmtime.wat2wasm((WAT_DIR / f"{name}.wat").read_text()))
        return cache[name]

    return load
