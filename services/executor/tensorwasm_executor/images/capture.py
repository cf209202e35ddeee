"""Capture of a pre-initialised image: run init once in a probe instance, read what it left.

The probe instance is of the module rewritten by `probes.export_everything`, so every
memory and global is reachable. Restoring writes through the SOURCE module's exports, so
state init leaves in a memory or global the module does not export cannot be restored; the
rule (docs/ARCHITECTURE.md, "Pre-initialised instances") is that init may change only
exported state: a non-exported memory or mutable global must be the same after init as
after instantiation (e.g. a C/Rust `__stack_pointer`, which a balanced init restores).
Anything else is refused with PREINIT_STATE_UNSUPPORTED instead of a wrong image.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import wasmtime
from tensorwasm_common.errors import ExportNotFoundError, InitExportInvalidError
from wasmtime import _ffi as ffi

from tensorwasm_executor.errors import (
    InitFailedError,
    PreinitStateUnsupportedError,
    UnsupportedValueTypeError,
)
from tensorwasm_executor.images.probes import Probe, Probes, export_everything
from tensorwasm_executor.wasm import rawcall
from tensorwasm_executor.wasm.engine import CompiledModule
from tensorwasm_executor.wasm.instance_image import (
    NUMERIC_KINDS,
    GlobalImage,
    InstanceImage,
    MemoryImage,
    export_of,
    global_is_mutable,
    read_global,
    read_memory,
)
from tensorwasm_executor.wasm.sandbox import Sandbox

__all__ = ["DEFAULT_INIT_EXPORT", "capture_image", "check_init_export", "run_init"]

DEFAULT_INIT_EXPORT = "wizer.initialize"


def check_init_export(exports: Sequence[Any], name: str) -> None:
    """Checks that `name` is a function export `() -> ()` among `exports` (ExportInfo).

    Raises:
        InitExportInvalidError: it is missing or has parameters or results.
    """
    info = next((e for e in exports if e.name == name), None)
    if info is None:
        raise InitExportInvalidError(
            f"init export {name!r} is not an exported function", metadata={"export": name}
        )
    if info.params or info.results:
        raise InitExportInvalidError(
            f"init export {name!r} must take no parameters and return nothing",
            metadata={"export": name},
        )


def _init_failed(stage: str, export: str, exc: Exception) -> InitFailedError:
    rawcall.take_host_exception()
    code = ""
    if isinstance(exc, wasmtime.Trap):
        try:
            code = exc.trap_code.name if exc.trap_code is not None else ""
        except ValueError:
            code = "OTHER"
    what = "the start function" if stage == "start" else f"init export {export!r}"
    return InitFailedError(
        f"{what} failed: {exc}; no pre-initialised image was made",
        metadata={"stage": stage, "export": export, "trap_code": code},
    )


def _hidden_state(
    store: wasmtime.Store, instance: Any, memories: Sequence[Probe], globals_: Sequence[Probe]
) -> list[tuple[str, int, object]]:
    """The state of non-exported memories and mutable globals: (kind, index, value)."""
    state: list[tuple[str, int, object]] = []
    for probe in memories:
        item = export_of(store, instance, probe.probe_name, ffi.WASMTIME_EXTERN_MEMORY)
        state.append(("memory", probe.index, read_memory(store, item)))
    for probe in globals_:
        item = export_of(store, instance, probe.probe_name, ffi.WASMTIME_EXTERN_GLOBAL)
        kind, bits = read_global(store, item)
        if kind not in NUMERIC_KINDS:
            raise PreinitStateUnsupportedError(
                f"global {probe.index} is a mutable reference, which an image cannot hold",
                metadata={"kind": "global", "index": str(probe.index)},
            )
        state.append(("global", probe.index, (kind, bits)))
    return state


def run_init(
    store: wasmtime.Store,
    pre: wasmtime.InstancePre,
    probes: Probes,
    probe_module: wasmtime.Module,
    *,
    source_digest: str,
    engine_fingerprint: str,
    init_export: str,
) -> InstanceImage:
    """Instantiates the probe module in `store` (armed with a deadline), runs init, and
    returns the image of what it left.

    Raises:
        InitFailedError: the start function or init trapped, exited or timed out.
        PreinitStateUnsupportedError: init changed state the image cannot restore.
    """
    try:
        instance = rawcall.instantiate(pre, store)
    except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
        raise _init_failed("start", init_export, exc) from None
    mutable = global_is_mutable(probe_module, [probe.probe_name for probe in probes.globals])
    hidden_memories = [p for p in probes.memories if p.exported_as is None]
    hidden_globals = [
        p for p in probes.globals if p.exported_as is None and mutable.get(p.probe_name)
    ]
    before = _hidden_state(store, instance, hidden_memories, hidden_globals)
    started = time.perf_counter()
    try:
        rawcall.call(store, instance, init_export, (), ())
    except (wasmtime.Trap, wasmtime.WasmtimeError) as exc:
        raise _init_failed("init", init_export, exc) from None
    except (ExportNotFoundError, UnsupportedValueTypeError) as exc:
        raise InitExportInvalidError(exc.message, metadata={"export": init_export}) from None
    init_seconds = time.perf_counter() - started
    after = _hidden_state(store, instance, hidden_memories, hidden_globals)
    for (kind, index, old), (_, _, new) in zip(before, after, strict=True):
        if old != new:
            raise PreinitStateUnsupportedError(
                f"init changed {kind} {index}, which the module does not export; an image "
                "can only restore exported memories and globals",
                metadata={"kind": kind, "index": str(index)},
            )
    memories = []
    for probe in probes.memories:
        if probe.exported_as is not None:
            item = export_of(store, instance, probe.probe_name, ffi.WASMTIME_EXTERN_MEMORY)
            pages, data = read_memory(store, item)
            memories.append(MemoryImage(probe.exported_as, pages, data))
    globals_ = []
    for probe in probes.globals:
        if probe.exported_as is not None and mutable.get(probe.probe_name):
            item = export_of(store, instance, probe.probe_name, ffi.WASMTIME_EXTERN_GLOBAL)
            value_kind, bits = read_global(store, item)
            if value_kind not in NUMERIC_KINDS:
                raise PreinitStateUnsupportedError(
                    f"global {probe.index} is a mutable reference, which an image cannot hold",
                    metadata={"kind": "global", "index": str(probe.index)},
                )
            globals_.append(GlobalImage(probe.exported_as, value_kind, bits))
    return InstanceImage(
        source_digest, engine_fingerprint, init_export, init_seconds, tuple(memories),
        tuple(globals_),
    )  # fmt: skip


def capture_image(
    sandbox: Sandbox,
    module: CompiledModule,
    wasm: bytes,
    init_export: str,
    *,
    timeout_seconds: float | None = None,
) -> InstanceImage:
    """Runs `init_export` once and returns the image of the state it left.

    Init runs in a fresh instance of a probe copy of `wasm` (every memory and global
    exported; see `probes`) with no WASI argv, environment, directory or stdin, no
    host-module state, and its output discarded, under the sandbox's memory cap.

    Args:
        sandbox: the sandbox that compiled `module`.
        module: `wasm` as compiled by `sandbox` (its exports are checked).
        wasm: the module's bytes.
        init_export: a function export `() -> ()`.
        timeout_seconds: the deadline of start function + init.

    Raises:
        InitExportInvalidError: no such export, or not `() -> ()`.
        InitFailedError: the start function or init failed (no image).
        PreinitStateUnsupportedError: init changed state no image can restore.
        InvalidWasmError: the probe copy does not compile.
    """
    if module.engine is not sandbox.engine:
        raise ValueError("module was compiled by another Sandbox")
    check_init_export(module.exports, init_export)
    probes = export_everything(wasm)
    with sandbox.init_store(probes.wasm, digest=module.digest, timeout_seconds=timeout_seconds) as (
        store,
        pre,
        probe_module,
    ):
        return run_init(
            store, pre, probes, probe_module, source_digest=module.digest,
            engine_fingerprint=sandbox.engine_fingerprint, init_export=init_export,
        )  # fmt: skip
