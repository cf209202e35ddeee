"""The wasmtime engine and linker (flags, fingerprint, host modules) and compiled modules."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import operator
import platform
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import wasmtime
from tensorwasm_common.errors import ExportNotFoundError

from tensorwasm_executor.errors import (
    ArgumentMismatchError,
    UnsatisfiedImportError,
    UnsupportedValueTypeError,
)
from tensorwasm_executor.wasm import cap_watch, rawcall, tensor_host
from tensorwasm_executor.wasm.host_modules import HostModule
from tensorwasm_executor.wasm.values import ValueType, WasmValue

# Engine settings; every one is part of `Sandbox.engine_fingerprint`.
ENGINE_FLAGS: Mapping[str, bool | str | int] = {
    "epoch_interruption": True,
    "cranelift_opt_level": "speed",
    "cranelift_nan_canonicalization": False,
    "wasm_threads": False,
    "wasm_simd": True,
    "wasm_multi_value": True,
    "wasm_reference_types": True,
    "wasm_bulk_memory": True,
    "max_wasm_stack": 512 * 1024,
}
_IMPORT_NAME = re.compile(r"`(.*)::(.*)`")


@dataclass(frozen=True)
class ExportInfo:
    """A function export and its signature."""

    name: str
    params: tuple[ValueType, ...]
    results: tuple[ValueType, ...]


@dataclass(frozen=True, eq=False)
class CompiledModule:
    """A validated, compiled, import-resolved module and its export signatures."""

    digest: str
    exports: tuple[ExportInfo, ...]
    size_bytes: int  # of the wasm (compiled here) or of the artifact file (loaded)
    module: wasmtime.Module = field(repr=False)
    instance_pre: wasmtime.InstancePre = field(repr=False)
    engine: wasmtime.Engine = field(repr=False)
    unrepresentable: frozenset[str] = field(repr=False)
    imported_modules: frozenset[str] = field(default=frozenset(), repr=False)
    # The cap-hit counters the module exports (`cap_watch`): (memory, table), None if absent.
    cap_counters: tuple[str | None, str | None] = field(default=(None, None), repr=False)
    _by_name: Mapping[str, ExportInfo] = field(init=False, repr=False)
    # The exports a call can reach: no reference type in their signature.
    _callable: Mapping[str, ExportInfo] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {info.name: info for info in self.exports})
        callable_ = {
            info.name: info
            for info in self.exports
            if not any(t.is_reference for t in info.params + info.results)
        }
        object.__setattr__(self, "_callable", callable_)

    def export(self, name: str) -> ExportInfo:
        """Returns the callable export `name`.

        Raises:
            ExportNotFoundError: no function export has that name.
            UnsupportedValueTypeError: its signature has a reference (or other) type.
        """
        info = self._by_name.get(name)
        if info is not None:
            bad = [t.value for t in info.params + info.results if t.is_reference]
            if bad:
                raise UnsupportedValueTypeError(
                    f"export {name!r} uses {bad[0]}", metadata={"export": name, "type": bad[0]}
                )
            return info
        if name in self.unrepresentable:
            raise UnsupportedValueTypeError(
                f"export {name!r} uses an unsupported type", metadata={"export": name}
            )
        raise ExportNotFoundError(f"no function export {name!r}", metadata={"export": name})

    def checked_export(self, name: str, args: Sequence[WasmValue]) -> ExportInfo:
        """The export's signature, checked against the arguments' types.

        Raises:
            ExportNotFoundError, UnsupportedValueTypeError: as for `export`.
            ArgumentMismatchError: the arguments' types are not the export's parameters.
        """
        info = self._callable.get(name) or self.export(name)
        got = tuple(map(_TYPE_OF, args))
        if got != info.params:
            expected = _signature(info.params)
            raise ArgumentMismatchError(
                f"export {name!r} takes {expected}, got {_signature(got)}",
                metadata={"export": name, "expected": expected, "got": _signature(got)},
            )
        return info


_TYPE_OF = operator.attrgetter("type")


def _signature(types: Sequence[ValueType]) -> str:
    return "(" + ", ".join(t.value for t in types) + ")"


def new_engine(
    flags: Mapping[str, bool | str | int], host_modules: Sequence[HostModule]
) -> tuple[wasmtime.Engine, wasmtime.Linker, str]:
    """An engine with `flags`, its linker (WASI, `wasi:tensor`, `wasi:scheduler` and
    `host_modules` defined), its fingerprint."""
    config = wasmtime.Config()
    for flag, value in flags.items():
        setattr(config, flag, value)
    engine = wasmtime.Engine(config)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    tensor_host.define(linker)
    for host in host_modules:
        host.define(linker)
    return engine, linker, _fingerprint(flags)


def _fingerprint(flags: Mapping[str, bool | str | int]) -> str:
    facts = {
        "wasmtime": importlib.metadata.version("wasmtime"),
        "flags": dict(flags),
        "machine": platform.machine(),
        "instrumentation": cap_watch.VERSION,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def link(
    engine: wasmtime.Engine,
    linker: wasmtime.Linker,
    digest: str,
    module: wasmtime.Module,
    size_bytes: int,
) -> CompiledModule:
    """Resolves `module`'s imports once (InstancePre) and reads its export signatures.

    Raises:
        UnsatisfiedImportError: an import is neither WASI preview 1 nor a host module.
    """
    try:
        pre = linker.instantiate_pre(module)
    except wasmtime.WasmtimeError as exc:
        match = _IMPORT_NAME.search(str(exc))
        where = match.groups() if match else ("", "")
        raise UnsatisfiedImportError(
            str(exc), metadata={"module": where[0], "name": where[1]}
        ) from None
    exports, unrepresentable, globals_ = [], set(), set()
    for export in module.exports:
        if isinstance(export.type, wasmtime.GlobalType):
            globals_.add(export.name)
        elif isinstance(export.type, wasmtime.FuncType):
            signature = rawcall.signature_of(export.type)
            if signature is None:
                unrepresentable.add(export.name)
            else:
                exports.append(ExportInfo(export.name, *signature))
    return CompiledModule(
        digest,
        tuple(exports),
        size_bytes,
        module,
        pre,
        engine,
        frozenset(unrepresentable),
        frozenset(entry.module for entry in module.imports),
        (
            cap_watch.MEMORY_COUNTER if cap_watch.MEMORY_COUNTER in globals_ else None,
            cap_watch.TABLE_COUNTER if cap_watch.TABLE_COUNTER in globals_ else None,
        ),
    )
