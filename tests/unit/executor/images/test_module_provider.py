"""The executor's artifact cache: compile once, then `Module.deserialize_file` from the
local artifact file in a fresh sandbox (as after a restart); refused files are replaced."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import pytest
import wasmtime
from tensorwasm_executor.images.module_provider import ModuleProvider
from tensorwasm_executor.wasm.sandbox import Sandbox
from tensorwasm_executor.wasm.values import ValueType, WasmValue


class Store:
    """The snapshot store's part: counts fetches."""

    def __init__(self, blobs: dict[str, bytes]) -> None:
        self.blobs = blobs
        self.fetches = 0

    async def get(self, digest: str) -> bytes:
        self.fetches += 1
        return self.blobs[digest]


def _provide(sandbox: Sandbox, store: Store, artifacts: Path, digest: str) -> tuple[object, bool]:
    with ThreadPoolExecutor(1) as pool:
        provider = ModuleProvider(sandbox, store.get, pool, artifact_dir=artifacts)
        module, hit = asyncio.run(provider.get(digest))
    return (module, provider.compiled), hit


@pytest.fixture
def add(wasm: Callable[[str], bytes]) -> tuple[str, Store]:
    data = wasm("add")
    digest = blake3.blake3(data).hexdigest()
    return digest, Store({digest: data})


def _call_add(sandbox: Sandbox, module: object) -> tuple[WasmValue, ...] | None:
    args = [WasmValue(ValueType.I32, 2), WasmValue(ValueType.I32, 40)]
    return sandbox.invoke(module, "add", args).results  # type: ignore[arg-type]


def test_compile_once_then_load_the_artifact(add: tuple[str, Store], tmp_path: Path) -> None:
    digest, store = add
    with Sandbox() as first:
        (module, compiled), _ = _provide(first, store, tmp_path, digest)
        assert compiled == 1 and store.fetches == 1
        path = tmp_path / first.engine_fingerprint[:16] / f"{digest}.cwasm"
        assert path.is_file()
        assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]
        assert _call_add(first, module) == (WasmValue(ValueType.I32, 42),)
    with Sandbox() as restarted:  # a new engine: nothing in memory
        (module, compiled), hit = _provide(restarted, store, tmp_path, digest)
        assert (compiled, store.fetches, hit) == (0, 1, False)  # no fetch, no compile
        assert [e.name for e in module.exports] == ["add"]  # type: ignore[attr-defined]
        assert _call_add(restarted, module) == (WasmValue(ValueType.I32, 42),)


def test_a_refused_artifact_is_replaced(add: tuple[str, Store], tmp_path: Path) -> None:
    digest, store = add
    with Sandbox() as box:
        path = tmp_path / box.engine_fingerprint[:16] / f"{digest}.cwasm"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"not an artifact at all")
        (module, compiled), _ = _provide(box, store, tmp_path, digest)
        assert compiled == 1 and store.fetches == 1
        assert _call_add(box, module) == (WasmValue(ValueType.I32, 42),)
        assert path.read_bytes() != b"not an artifact at all"


def test_engines_with_other_flags_keep_their_own_artifacts(
    add: tuple[str, Store], tmp_path: Path
) -> None:
    digest, store = add
    with Sandbox() as plain, Sandbox(fuel_metering=True) as metered:
        assert plain.engine_fingerprint != metered.engine_fingerprint
        _provide(plain, store, tmp_path, digest)
        (module, compiled), _ = _provide(metered, store, tmp_path, digest)
        assert compiled == 1  # the plain engine's artifact is not used
        assert len(list(tmp_path.iterdir())) == 2
        assert _call_add(metered, module) == (WasmValue(ValueType.I32, 42),)


def _flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x55
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped byte", "missing digest", "garbled digest"])
def test_an_artifact_that_fails_its_digest_is_never_mapped_and_is_replaced(
    add: tuple[str, Store], tmp_path: Path, damage: str
) -> None:
    """wasmtime maps serialized code as trusted machine code: a flipped byte in the code
    would crash the executor on the next call, so the file is checked before it is mapped."""
    digest, store = add
    with Sandbox() as first:
        _provide(first, store, tmp_path, digest)
        path = tmp_path / first.engine_fingerprint[:16] / f"{digest}.cwasm"
        digest_file = path.with_name(path.name + ".blake3")
        assert digest_file.read_text().strip() == blake3.blake3(path.read_bytes()).hexdigest()
    good = path.read_bytes()
    if damage == "flipped byte":
        _flip_byte(path, len(good) // 2)  # inside the compiled code, past wasmtime's header
    elif damage == "missing digest":
        digest_file.unlink()
    else:
        digest_file.write_text("not a digest\n")
    with Sandbox() as restarted:
        (module, compiled), _ = _provide(restarted, store, tmp_path, digest)
        assert compiled == 1 and store.fetches == 2  # compiled again, the file not trusted
        assert _call_add(restarted, module) == (WasmValue(ValueType.I32, 42),)
    assert digest_file.read_text().strip() == blake3.blake3(path.read_bytes()).hexdigest()
    with Sandbox() as again:  # the replaced file is trusted again
        (_, compiled), _ = _provide(again, store, tmp_path, digest)
        assert compiled == 0


def test_the_artifact_directory_keeps_the_most_recently_used_files_under_its_cap(
    tmp_path: Path,
) -> None:
    modules = {}
    for n in range(3):
        data = wasmtime.wat2wasm(f'(module (func (export "f") (result i32) i32.const {n}))')
        modules[blake3.blake3(data).hexdigest()] = bytes(data)
    store = Store(modules)
    first, second, third = modules

    def provider(box: Sandbox, pool: ThreadPoolExecutor, cap: int) -> ModuleProvider:
        return ModuleProvider(
            box, store.get, pool, artifact_dir=tmp_path, artifact_dir_max_bytes=cap
        )

    with Sandbox() as box, ThreadPoolExecutor(1) as pool:
        filler = provider(box, pool, 0)
        for digest in (first, second):
            asyncio.run(filler.get(digest))
        directory = tmp_path / box.engine_fingerprint[:16]
    sizes = [p.stat().st_size for p in directory.glob("*.cwasm")]
    for age, digest in enumerate((first, second)):  # both old; `first` the older
        os.utime(directory / f"{digest}.cwasm", ns=(age * 10**9, age * 10**9))
    with Sandbox() as box, ThreadPoolExecutor(1) as pool:  # a restart: nothing in memory
        bounded = provider(box, pool, sum(sizes) + max(sizes) // 2)  # room for two files
        asyncio.run(bounded.get(first))  # loaded from its file, which makes it recent
        assert bounded.compiled == 0
        asyncio.run(bounded.get(third))  # a third file: the least recently used goes
    kept = sorted(p.name for p in directory.glob("*.cwasm"))
    assert kept == sorted(f"{digest}.cwasm" for digest in (first, third))
    assert bounded.evicted == 1
    assert sorted(p.name for p in directory.glob("*.blake3")) == [f"{n}.blake3" for n in kept]
