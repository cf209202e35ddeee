"""A damaged local artifact never reaches wasmtime: a restarted executor whose `.cwasm` has a
flipped byte in its compiled code checks the digest kept beside it, compiles (or restores)
the module again, and keeps serving. Real processes; the stack is restarted on its data dir."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest
from tensorwasm.common.v1.values_pb2 import Value

pytestmark = pytest.mark.integration


def code_offset(path: Path) -> int:
    """The file offset of the compiled code (`.text`) in a wasmtime artifact (an ELF64 file)."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2  # 64-bit
    (section_table,) = struct.unpack_from("<Q", data, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", data, 0x3A)
    names_offset = struct.unpack_from("<Q", data, section_table + names_index * entry_size + 0x18)
    for index in range(count):
        header = section_table + index * entry_size
        (name,) = struct.unpack_from("<I", data, header)
        start = names_offset[0] + name
        if data[start : data.index(b"\0", start)] == b".text":
            (offset,) = struct.unpack_from("<Q", data, header + 0x18)
            return int(offset)
    raise AssertionError("no .text section in the artifact")


def test_a_flipped_byte_in_the_local_artifact_costs_a_compile_not_the_executor(
    launch_stack: Callable[[Path], Any], tmp_path: Path, wasm: Callable[[str], bytes]
) -> None:
    first = launch_stack(tmp_path)
    with first.client() as client:
        function = client.create_function("add", wasm("add"))
        response = client.invoke("add", "add", [Value(i32=1), Value(i32=2)])
        assert list(response.outcome.success.results) == [Value(i32=3)]
    first.stop()
    (artifact,) = (tmp_path / "executor" / "artifacts").rglob(f"{function.module_digest}.cwasm")
    digest_file = artifact.with_name(artifact.name + ".blake3")
    assert digest_file.read_text().strip() == blake3.blake3(artifact.read_bytes()).hexdigest()
    data = bytearray(artifact.read_bytes())
    data[code_offset(artifact)] ^= 0xFF  # the first instruction of the compiled code
    artifact.write_bytes(bytes(data))

    second = launch_stack(tmp_path)
    executor = second.services["executor"]
    with second.client() as client:
        for _ in range(3):  # the issue saw every call crash the executor, 3 of 3 restarts
            response = client.invoke("add", "add", [Value(i32=1), Value(i32=2)])
            assert list(response.outcome.success.results) == [Value(i32=3)]
    os.kill(executor.pid, 0)  # still alive (raises ProcessLookupError if it died)
    assert second.launcher.services()["executor"].pid == executor.pid
    # The damaged file was replaced by a good one, with its digest.
    assert bytes(data) != artifact.read_bytes()
    assert digest_file.read_text().strip() == blake3.blake3(artifact.read_bytes()).hexdigest()
