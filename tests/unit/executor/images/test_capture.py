"""Unit tests for pre-initialised images: probe rewriting, capture, the payload format, restore."""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import pytest
import wasmtime
from tensorwasm_common.errors import Code, InitExportInvalidError
from tensorwasm_executor.errors import (
    ImageFormatError,
    InitFailedError,
    PreinitStateUnsupportedError,
)
from tensorwasm_executor.images.capture import capture_image
from tensorwasm_executor.images.probes import PROBE_PREFIX, export_everything
from tensorwasm_executor.wasm import instance_image as preinit
from tensorwasm_executor.wasm.sandbox import CompiledModule, Sandbox
from tensorwasm_executor.wasm.values import ValueType, WasmValue

INIT = "wizer.initialize"


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(default_timeout_seconds=10.0) as box:
        yield box


def compiled(sandbox: Sandbox, wasm: bytes) -> CompiledModule:
    return sandbox.compile(blake3.blake3(wasm).hexdigest(), wasm)


def wat(text: str) -> bytes:
    return bytes(wasmtime.wat2wasm(text))


def one(sandbox: Sandbox, module: CompiledModule, export: str, *args: WasmValue, **kw: object):  # type: ignore[no-untyped-def]
    outcome = sandbox.invoke(module, export, list(args), **kw)  # type: ignore[arg-type]
    assert outcome.failure is None, outcome.failure
    assert outcome.results is not None
    return outcome.results[0].payload


def i32(value: int) -> WasmValue:
    return WasmValue(ValueType.I32, value)


# --- probe rewriting --------------------------------------------------------------------------


def test_export_everything_names_hidden_memories_and_globals() -> None:
    source = wat(
        """(module
          (import "wasi_snapshot_preview1" "random_get" (func (param i32 i32) (result i32)))
          (memory 1)
          (global $a (mut i32) (i32.const 7))
          (global $b (export "b") (mut i64) (i64.const 9))
          (global $c f32 (f32.const 1))
          (func (export "f")))"""
    )
    probes = export_everything(source)
    assert [(p.index, p.exported_as) for p in probes.memories] == [(0, None)]
    assert [(p.index, p.exported_as) for p in probes.globals] == [(0, None), (1, "b"), (2, None)]
    names = {e.name for e in wasmtime.Module(wasmtime.Engine(), probes.wasm).exports}
    assert names == {
        "f", "b", f"{PROBE_PREFIX}memory_0", f"{PROBE_PREFIX}global_0", f"{PROBE_PREFIX}global_2"
    }  # fmt: skip


def test_export_everything_adds_an_export_section_where_there_is_none() -> None:
    source = wat("(module (memory 1) (global (mut i32) (i32.const 0)) (start $s) (func $s))")
    probes = export_everything(source)
    module = wasmtime.Module(wasmtime.Engine(), probes.wasm)  # section order is valid
    assert sorted(e.name for e in module.exports) == [
        f"{PROBE_PREFIX}global_0", f"{PROBE_PREFIX}memory_0"
    ]  # fmt: skip


# --- capture and restore ---------------------------------------------------------------------


def test_image_carries_init_state_and_init_is_not_rerun(
    sandbox: Sandbox, wasm: Callable[[str], bytes]
) -> None:
    source = wasm("preinit_table")
    module = compiled(sandbox, source)
    image = capture_image(sandbox, module, source, INIT)
    assert image.init_export == INIT and image.source_digest == module.digest
    assert image.memory_bytes == 80 * 65536
    assert [(g.export, g.bits[:4]) for g in image.globals] == [("ready", b"\x01\0\0\0")]
    stamp = one(sandbox, module, "stamp", image=image)
    assert stamp != 0  # a random stamp: init's random_get ran once, at capture
    for _ in range(3):
        assert one(sandbox, module, "stamp", image=image) == stamp
        assert one(sandbox, module, "init_runs", image=image) == 1
        assert one(sandbox, module, "is_ready", image=image) == 1
        assert one(sandbox, module, "bump", image=image) == 1  # no state leaks between calls
    # Without the image the same module has none of init's state.
    assert one(sandbox, module, "init_runs") == 0
    assert one(sandbox, module, "lookup", i32(5)) == 0
    assert one(sandbox, module, "lookup", i32(5), image=image) != 0


def test_resident_starts_from_the_image_and_keeps_its_own_state(
    sandbox: Sandbox, wasm: Callable[[str], bytes]
) -> None:
    source = wasm("preinit_table")
    module = compiled(sandbox, source)
    image = capture_image(sandbox, module, source, INIT)
    resident, outcome = sandbox.spawn(module, image=image)
    assert resident is not None and outcome.failure is None
    try:
        counts = [resident.call("bump", []).results for _ in range(3)]
        assert [c[0].payload for c in counts if c] == [1, 2, 3]
        stamp = resident.call("stamp", []).results
        assert stamp is not None and stamp[0].payload == one(sandbox, module, "stamp", image=image)
    finally:
        resident.terminate()


def test_image_round_trips_through_the_payload_format_and_a_file(
    sandbox: Sandbox, wasm: Callable[[str], bytes], tmp_path: Path
) -> None:
    source = wasm("preinit_table")
    module = compiled(sandbox, source)
    image = capture_image(sandbox, module, source, INIT)
    payload = preinit.encode_image(image)
    assert payload[:8] == preinit.MAGIC
    assert struct.unpack_from("<I", payload, 8)[0] == preinit.FORMAT_VERSION
    path = tmp_path / "image.twimg"
    path.write_bytes(payload)
    for loaded in (preinit.decode_image(payload), preinit.read_image_file(path)):
        assert loaded.engine_fingerprint == sandbox.engine_fingerprint
        assert all(
            bytes(m.data) == bytes(o.data)
            for m, o in zip(loaded.memories, image.memories, strict=True)
        )
        assert loaded.globals == image.globals
        assert one(sandbox, module, "stamp", image=loaded) == one(
            sandbox, module, "stamp", image=image
        )
    assert preinit.encode_image(preinit.decode_image(payload)) == payload  # deterministic


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: b"NOTIMAGE" + p[8:], "bad magic"),
        (lambda p: p[:8] + struct.pack("<I", 2) + p[12:], "version 2"),
        (lambda p: p[:20] + b"\xff" + p[21:], "header"),
        (lambda p: p[: len(p) // 2], "out of bounds"),
        (lambda p: p[:5], "truncated"),
    ],
)
def test_malformed_payloads_are_refused(
    sandbox: Sandbox,
    mutate: Callable[[bytes], bytes],
    message: str,
) -> None:
    source = wat('(module (memory (export "m") 1) (func (export "init")))')
    module = compiled(sandbox, source)
    payload = preinit.encode_image(capture_image(sandbox, module, source, "init"))
    with pytest.raises(ImageFormatError, match=message) as caught:
        preinit.decode_image(mutate(payload))
    assert caught.value.code is Code.DATA_LOSS
    assert caught.value.reason == "INSTANCE_IMAGE_INVALID"


def test_exported_global_values_are_bit_exact(sandbox: Sandbox) -> None:
    # A signalling NaN would be quieted by a Python float round trip.
    source = wat(
        """(module
          (global $g (export "g") (mut f32) (f32.const 0))
          (global $h (export "h") (mut i64) (i64.const 0))
          (func (export "init")
            (global.set $g (f32.reinterpret_i32 (i32.const 0x7fa00001)))
            (global.set $h (i64.const -2)))
          (func (export "bits") (result i32) (i32.reinterpret_f32 (global.get $g)))
          (func (export "get_h") (result i64) (global.get $h)))"""
    )
    module = compiled(sandbox, source)
    image = preinit.decode_image(
        preinit.encode_image(capture_image(sandbox, module, source, "init"))
    )
    assert one(sandbox, module, "bits", image=image) == 0x7FA00001
    assert one(sandbox, module, "get_h", image=image) == -2


def test_init_that_changes_a_hidden_global_is_refused(sandbox: Sandbox) -> None:
    source = wat(
        """(module (memory (export "memory") 1)
          (global $hidden (mut i32) (i32.const 0))
          (func (export "init") (global.set $hidden (i32.const 1))))"""
    )
    module = compiled(sandbox, source)
    with pytest.raises(PreinitStateUnsupportedError) as caught:
        capture_image(sandbox, module, source, "init")
    assert caught.value.code is Code.FAILED_PRECONDITION
    assert caught.value.metadata == {"kind": "global", "index": "0"}


def test_init_that_writes_a_hidden_memory_is_refused(sandbox: Sandbox) -> None:
    source = wat(
        '(module (memory 1) (func (export "init") (i32.store (i32.const 8) (i32.const 1))))'
    )
    module = compiled(sandbox, source)
    with pytest.raises(PreinitStateUnsupportedError) as caught:
        capture_image(sandbox, module, source, "init")
    assert caught.value.metadata == {"kind": "memory", "index": "0"}


def test_hidden_state_that_init_leaves_as_it_found_it_is_accepted(sandbox: Sandbox) -> None:
    source = wat(
        """(module (memory 1)
          (global $sp (mut i32) (i32.const 100))
          (func (export "init")
            (global.set $sp (i32.const 50)) (global.set $sp (i32.const 100)))
          (func (export "sp") (result i32) (global.get $sp)))"""
    )
    module = compiled(sandbox, source)
    image = capture_image(sandbox, module, source, "init")
    assert image.memories == () and image.globals == ()
    assert one(sandbox, module, "sp", image=image) == 100


def test_a_trapping_init_gives_a_typed_error(sandbox: Sandbox) -> None:
    source = wat('(module (func (export "init") unreachable))')
    module = compiled(sandbox, source)
    with pytest.raises(InitFailedError) as caught:
        capture_image(sandbox, module, source, "init")
    assert caught.value.code is Code.FAILED_PRECONDITION
    assert caught.value.metadata == {"stage": "init", "export": "init", "trap_code": "UNREACHABLE"}


def test_a_trapping_start_function_gives_a_typed_error(
    sandbox: Sandbox, wasm: Callable[[str], bytes]
) -> None:
    source = wat('(module (start $s) (func $s unreachable) (func (export "init")))')
    module = compiled(sandbox, source)
    with pytest.raises(InitFailedError) as caught:
        capture_image(sandbox, module, source, "init")
    assert caught.value.metadata["stage"] == "start"


def test_an_endless_init_is_stopped_by_the_deadline(sandbox: Sandbox) -> None:
    source = wat('(module (func (export "init") (loop $l (br $l))))')
    module = compiled(sandbox, source)
    with pytest.raises(InitFailedError) as caught:
        capture_image(sandbox, module, source, "init", timeout_seconds=0.05)
    assert caught.value.metadata["trap_code"] == "INTERRUPT"


@pytest.mark.parametrize("export", ["missing", "takes", "gives"])
def test_the_init_export_must_be_a_function_of_no_params_or_results(
    sandbox: Sandbox, export: str
) -> None:
    source = wat(
        """(module (func (export "takes") (param i32))
          (func (export "gives") (result i32) (i32.const 0)))"""
    )
    module = compiled(sandbox, source)
    with pytest.raises(InitExportInvalidError) as caught:
        capture_image(sandbox, module, source, export)
    assert caught.value.code is Code.INVALID_ARGUMENT
    assert caught.value.metadata == {"export": export}


def test_an_image_larger_than_the_memory_limit_fails_the_call(
    sandbox: Sandbox, wasm: Callable[[str], bytes]
) -> None:
    source = wat(
        """(module (memory (export "memory") 1)
          (func (export "init") (drop (memory.grow (i32.const 15))))
          (func (export "pages") (result i32) (memory.size)))"""
    )
    module = compiled(sandbox, source)
    image = capture_image(sandbox, module, source, "init")
    assert one(sandbox, module, "pages", image=image) == 16
    outcome = sandbox.invoke(module, "pages", [], image=image, max_memory_bytes=4 * 65536)
    assert outcome.failure is not None and outcome.results is None


def test_an_image_mapped_from_its_file_is_copy_on_write(
    sandbox: Sandbox, wasm: Callable[[str], bytes], tmp_path: Path
) -> None:
    source = wasm("preinit_table")
    module = compiled(sandbox, source)
    path = tmp_path / "image.twimg"
    path.write_bytes(preinit.encode_image(capture_image(sandbox, module, source, INIT)))
    before = path.read_bytes()
    image = preinit.read_image_file(path)
    assert image.memories[0].source is not None  # page-aligned: mapped, not copied
    resident, _ = sandbox.spawn(module, image=image)
    assert resident is not None
    try:
        bumps = [resident.call("bump", []).results for _ in range(3)]
        assert [b[0].payload for b in bumps if b] == [1, 2, 3]
    finally:
        resident.terminate()
    assert one(sandbox, module, "bump", image=image) == 1  # the guest's writes stayed private
    assert one(sandbox, module, "init_runs", image=image) == 1
    assert path.read_bytes() == before
