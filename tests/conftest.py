"""Fixtures shared by every test directory: the WAT modules under tests/fixtures/wat."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import wasmtime

WAT_DIR = Path(__file__).parent / "fixtures" / "wat"

# The real engines as fixtures: postgres_server, postgres_url, database_url (PostgreSQL);
# seaweedfs (the S3 server).
pytest_plugins = ("tests.engines.postgres", "tests.engines.databases", "tests.engines.seaweedfs")


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


# A well-formed PTX that declares `vector_add` and fetches from a texture, which the cpu
# backend's PTX executor does not run (not_available).
FOREIGN_PTX = (
    b".version 7.8\n.target sm_80\n.address_size 64\n\n"
    b".visible .entry vector_add(\n)\n{\n\t.reg .f32 %f<5>;\n\t.reg .b32 %r<2>;\n"
    b"\t.reg .b64 %rd<2>;\n\ttex.1d.v4.f32.s32 {%f1, %f2, %f3, %f4}, [%rd1, {%r1}];\n"
    b"\tret;\n}\n"
)


def wat_string(data: bytes) -> str:
    """`data` as the inside of a WAT string literal (every unsafe byte as \\hh)."""
    safe = {b for b in range(0x20, 0x7F)} - {ord('"'), ord("\\")}
    return "".join(chr(b) if b in safe else f"\\{b:02x}" for b in data)


def render_cuda_guest(name: str) -> bytes:
    """tests/fixtures/wat/<name>.wat.in with the canonical vector_add PTX (and the foreign
    one) inserted, as a binary module."""
    from tensorwasm_kernels import CATALOG

    ptx = CATALOG["vector_add"].ptx_text().encode("utf-8")
    text = (WAT_DIR / f"{name}.wat.in").read_text()
    substitutions = {
        "PTX": wat_string(ptx),
        "PTX_LEN": str(len(ptx)),
        "ALIEN": wat_string(FOREIGN_PTX),
        "ALIEN_LEN": str(len(FOREIGN_PTX)),
    }
    for key, value in substitutions.items():
        text = text.replace("{{" + key + "}}", value)
    return bytes(wasmtime.wat2wasm(text))


@pytest.fixture(scope="session")
def cuda_guest() -> Callable[[str], bytes]:
    """Returns the binary module of a `wasi:cuda` guest template (cuda_vector_add,
    cuda_errors) with the canonical vector_add PTX in its data segment."""
    cache: dict[str, bytes] = {}

    def load(name: str) -> bytes:
        if name not in cache:
            cache[name] = render_cuda_guest(name)
        return cache[name]

    return load
