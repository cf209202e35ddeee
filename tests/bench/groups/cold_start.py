"""Group `cold_start`: pre-initialised instance images against wasmtime's own serialization.

For each payload size N (1 MiB and 16 MiB harness-timed; 128 MiB self-timed, see
`tests.bench.selftimed`), in the same run:

- `cold_start/capture/<N>`: `images.capture_image` of a module whose init fills its N-byte
  memory, then `encode_image` (the payload a snapshot record stores); anchor
  `wasmtime/serialize/<N>`: `Module.serialize()` of a module with an N-byte data segment.
- `cold_start/restore/<N>`: restore from the executor's local cache, as `ImageProvider`
  holds it: the image file opened, mapped and parsed once (`read_image_file`, kept in the
  provider's LRU), then per restore a fresh store + instantiate + `apply_image` (grow, map
  the block copy-on-write over the memory: no copy, no open, no parse). Anchors:
  `wasmtime/deserialize_file/<N>` (the issue's goal: restore <= 1.3x it),
  `wasmtime/deserialize/<N>` (from bytes), and `wasmtime/deserialize_file_instantiate/<N>`
  (plus a fresh store and instance: wasmtime maps the data segment copy-on-write).
- `cold_start/restore_from_file/<N>`: the same on an LRU miss: `read_image_file` (open +
  mmap + header parse) each time, then as above.
- `cold_start/restore_in_memory/<N>`: the same from an image held as bytes (no file: what a
  provider without an image directory keeps), which copies the N bytes.
- `cold_start/disk_round_trip/<N>`: encode + atomic write (fsync) + `read_image_file`;
  anchor `wasmtime/disk_round_trip/<N>`: serialize + the same write + `deserialize_file`.

And, self-timed (init takes tens of ms): `cold_start/first_call/image` (a live instance from
the image of `preinit_table.wat`, then `lookup`) against `cold_start/first_call/init`
(instantiate, run `wizer.initialize`, then `lookup`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import wasmtime
from tensorwasm_common.files import write_atomically
from tensorwasm_executor.images.capture import capture_image
from tensorwasm_executor.wasm import instance_image as preinit
from tensorwasm_executor.wasm import rawcall
from tensorwasm_executor.wasm.sandbox import CompiledModule, Sandbox
from tensorwasm_executor.wasm.values import WasmValue

from tests.bench.harness import Benchmark, RunConfig, group
from tests.bench.selftimed import Tier, as_params, run_self_timed

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "wat"
PAGE = 65536
MiB = 1 << 20
HARNESS_SIZES = (1 * MiB, 16 * MiB)
SELF_TIMED_SIZE = 128 * MiB
SIZE_TIER, SIZE_TIER_QUICK = Tier(20, 2, 5), Tier(6, 1, 3)
INIT_TIER, INIT_TIER_QUICK = Tier(40, 3, 5), Tier(10, 2, 5)
FAR_DEADLINE = 1 << 40


def _uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _section(section_id: int, payload: bytes) -> bytes:
    return bytes([section_id]) + _uleb(len(payload)) + payload


def sized_module(size: int, *, data: bytes | None) -> bytes:
    """A module with `size` bytes of exported memory, an `init` that fills it with 0xAB
    and a `noop`; with `data`, also an active data segment of those bytes at 0."""
    pages = size // PAGE
    fill = b"\x41\x00\x41\xab\x01" + b"\x41" + _signed(size) + b"\xfc\x0b\x00"
    bodies = [b"\x00" + fill + b"\x0b", b"\x00\x0b"]
    sections = [
        _section(1, b"\x01\x60\x00\x00"),
        _section(3, b"\x02\x00\x00"),
        _section(5, b"\x01\x00" + _uleb(pages)),
        _section(
            7,
            b"\x03" + b"\x06memory\x02\x00" + b"\x04init\x00\x00" + b"\x04noop\x00\x01",
        ),
    ]
    if data is not None:
        sections.append(_section(12, b"\x01"))  # data count (memory.fill needs bulk memory)
    sections.append(_section(10, b"\x02" + b"".join(_uleb(len(b)) + b for b in bodies)))
    if data is not None:
        sections.append(_section(11, b"\x01\x00\x41\x00\x0b" + _uleb(len(data)) + data))
    return b"\x00asm\x01\x00\x00\x00" + b"".join(sections)


def _signed(value: int) -> bytes:
    """Signed LEB128 of a non-negative i32 constant."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40):
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _label(size: int) -> str:
    return f"{size // MiB}MiB"


class _Sized:
    """Everything one payload size needs, set up once."""

    def __init__(self, sandbox: Sandbox, size: int, workdir: Path) -> None:
        self.size = size
        self.wasm = sized_module(size, data=None)
        self.module = sandbox.compile(f"{size:064x}", self.wasm)
        self.sandbox = sandbox
        self.image = capture_image(sandbox, self.module, self.wasm, "init")
        self.payload = preinit.encode_image(self.image)
        self.image_path = workdir / f"image-{size}.twimg"
        self.image_path.write_bytes(self.payload)
        self.cached = preinit.read_image_file(self.image_path)  # as the provider's LRU has it
        engine = self.module.engine
        self.engine = engine
        self.data_module = wasmtime.Module(engine, sized_module(size, data=os.urandom(size)))
        self.serialized = self.data_module.serialize()
        self.serialized_path = workdir / f"module-{size}.cwasm"
        self.serialized_path.write_bytes(self.serialized)
        self.round_trip_image = workdir / f"rt-{size}.twimg"
        self.round_trip_module = workdir / f"rt-{size}.cwasm"
        self.linker = wasmtime.Linker(engine)

    def capture(self) -> bytes:
        return preinit.encode_image(capture_image(self.sandbox, self.module, self.wasm, "init"))

    def _instantiate_with(self, image: preinit.InstanceImage) -> None:
        store = wasmtime.Store(self.engine)
        try:
            store.set_epoch_deadline(FAR_DEADLINE)
            instance = rawcall.instantiate(self.module.instance_pre, store)
            preinit.apply_image(store, instance, image)
        finally:
            store.close()

    def restore(self) -> None:
        self._instantiate_with(self.cached)

    def restore_from_file(self) -> None:
        self._instantiate_with(preinit.read_image_file(self.image_path))

    def restore_in_memory(self) -> None:
        self._instantiate_with(self.image)

    def deserialize_file(self) -> wasmtime.Module:
        return wasmtime.Module.deserialize_file(self.engine, str(self.serialized_path))

    def deserialize(self) -> wasmtime.Module:
        return wasmtime.Module.deserialize(self.engine, self.serialized)

    def deserialize_file_instantiate(self) -> None:
        module = self.deserialize_file()
        store = wasmtime.Store(self.engine)
        try:
            store.set_epoch_deadline(FAR_DEADLINE)
            self.linker.instantiate(store, module)
        finally:
            store.close()

    def disk_round_trip(self) -> preinit.InstanceImage:
        write_atomically(self.round_trip_image, preinit.encode_image(self.image))
        return preinit.read_image_file(self.round_trip_image)

    def wasmtime_disk_round_trip(self) -> wasmtime.Module:
        write_atomically(self.round_trip_module, self.data_module.serialize())
        return wasmtime.Module.deserialize_file(self.engine, str(self.round_trip_module))

    def benchmarks(self) -> list[Benchmark]:
        n = _label(self.size)
        params = {
            "payload_bytes": self.size,
            "image_payload_bytes": len(self.payload),
            "serialized_module_bytes": len(self.serialized),
        }

        def bench(name: str, fn: Callable[[], object], *anchors: str, text: str) -> Benchmark:
            return Benchmark(f"{name}/{n}", fn, tuple(f"{a}/{n}" for a in anchors), text, params)

        return [
            bench("wasmtime/serialize", self.data_module.serialize, text="Module.serialize()"),
            bench("wasmtime/deserialize_file", self.deserialize_file, text="deserialize_file"),
            bench("wasmtime/deserialize", self.deserialize, text="Module.deserialize(bytes)"),
            bench(
                "wasmtime/deserialize_file_instantiate",
                self.deserialize_file_instantiate,
                text="deserialize_file + fresh store + instantiate (data segment: CoW map)",
            ),
            bench(
                "wasmtime/disk_round_trip",
                self.wasmtime_disk_round_trip,
                text="serialize + atomic fsynced write + deserialize_file",
            ),
            bench(
                "cold_start/capture",
                self.capture,
                "wasmtime/serialize",
                text="capture_image (probe compile + init fill) + encode_image",
            ),
            bench(
                "cold_start/restore",
                self.restore,
                "wasmtime/deserialize_file",
                "wasmtime/deserialize",
                "wasmtime/deserialize_file_instantiate",
                text="cached file-backed image: fresh store + instantiate + apply_image (CoW map)",
            ),
            bench(
                "cold_start/restore_from_file",
                self.restore_from_file,
                "wasmtime/deserialize_file",
                "wasmtime/deserialize_file_instantiate",
                text="read_image_file (open, mmap, parse) + store + instantiate + apply_image",
            ),
            bench(
                "cold_start/restore_in_memory",
                self.restore_in_memory,
                "wasmtime/deserialize_file",
                "wasmtime/deserialize_file_instantiate",
                text="fresh store + instantiate + apply_image from the in-memory image",
            ),
            bench(
                "cold_start/disk_round_trip",
                self.disk_round_trip,
                "wasmtime/disk_round_trip",
                text="encode_image + atomic fsynced write + read_image_file",
            ),
        ]


def _first_call_benchmarks(sandbox: Sandbox, module: CompiledModule, wasm: bytes) -> list[Any]:
    image = capture_image(sandbox, module, wasm, "wizer.initialize")
    args = (WasmValue.i32(1000),)

    def first_call(from_image: bool) -> object:
        resident, outcome = sandbox.spawn(module, image=image if from_image else None)
        if resident is None:
            raise RuntimeError(f"preinit_table did not instantiate: {outcome.failure}")
        try:
            if not from_image:
                resident.call("wizer.initialize", ())
            result = resident.call("lookup", args)
            if result.results is None or result.results[0].payload == 0:
                raise RuntimeError("the table is missing")
            return result
        finally:
            resident.terminate()

    return [
        Benchmark(
            "cold_start/first_call/init",
            lambda: first_call(False),
            description="live instance: instantiate + wizer.initialize + lookup",
        ),
        Benchmark(
            "cold_start/first_call/image",
            lambda: first_call(True),
            ("cold_start/first_call/init",),
            "live instance from the image (instantiate + apply 5 MiB) + lookup",
        ),
    ]


@group("cold_start")
def cold_start(config: RunConfig) -> Iterator[Sequence[Benchmark]]:
    """Image capture / restore / disk round trip vs wasmtime serialize / deserialize(_file)."""
    with contextlib.ExitStack() as cleanup:
        sandbox = cleanup.enter_context(Sandbox(max_memory_bytes=256 * MiB))
        workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="tw-cold-")))
        table_wasm = bytes(wasmtime.wat2wasm((FIXTURES / "preinit_table.wat").read_text()))
        table = sandbox.compile("f" * 64, table_wasm)
        init_tier = INIT_TIER_QUICK if config.quick else INIT_TIER
        first = run_self_timed(
            "cold_start [self-timed: first call, preinit_table.wat]",
            _first_call_benchmarks(sandbox, table, table_wasm),
            init_tier,
        )
        big = _Sized(sandbox, SELF_TIMED_SIZE, workdir)
        size_tier = SIZE_TIER_QUICK if config.quick else SIZE_TIER
        long = run_self_timed(
            f"cold_start [self-timed: {_label(SELF_TIMED_SIZE)}]", big.benchmarks(), size_tier
        )
        del big
        self_timed = {
            "self_timed": [as_params(r, init_tier) for r in first.values()]
            + [as_params(r, size_tier) for r in long.values()]
        }
        benchmarks: list[Benchmark] = []
        for size in HARNESS_SIZES:
            benchmarks += _Sized(sandbox, size, workdir).benchmarks()
        first_bench = benchmarks[0]
        benchmarks[0] = Benchmark(
            first_bench.name, first_bench.fn, first_bench.anchors, first_bench.description,
            {**first_bench.params, **self_timed},
        )  # fmt: skip
        yield benchmarks
