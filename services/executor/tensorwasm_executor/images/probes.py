"""Wasm binary rewriting for pre-initialisation: export every defined memory and global.

wasmtime's API reaches an instance's state only through its exports, so the capture of a
pre-initialised image runs init in a copy of the module whose export section also names
every defined memory and global (the Wizer approach, without Wizer). Only the section
structure, the import section and the export section are parsed; code is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

from tensorwasm_common.errors import InvalidWasmError

from tensorwasm_executor.wasm.binary import (
    Reader,
    Section,
    encode_name,
    join_sections,
    split_sections,
    uleb,
)

__all__ = ["PROBE_PREFIX", "Probe", "Probes", "export_everything"]

PROBE_PREFIX = "__tensorwasm_probe_"
_SECTION_IMPORT, _SECTION_MEMORY, _SECTION_GLOBAL, _SECTION_EXPORT = 2, 5, 6, 7
# Non-custom sections that must come before the export section (the tag section, 13,
# sits between memory and global).
_BEFORE_EXPORT = frozenset({1, 2, 3, 4, 5, 6, 13})
_KIND_MEMORY, _KIND_GLOBAL = 2, 3


@dataclass(frozen=True)
class Probe:
    """One defined memory or global: its index space index, the name the source module
    exports it under (None: not exported), and the name it has in the probe module."""

    index: int
    exported_as: str | None
    probe_name: str


@dataclass(frozen=True)
class Probes:
    """The probe module's bytes and its defined memories and globals."""

    wasm: bytes
    memories: tuple[Probe, ...]
    globals: tuple[Probe, ...]


def _imported_counts(payload: bytes) -> tuple[int, int]:
    """(imported memories, imported globals) of an import section's payload."""
    reader = Reader(payload)
    memories = globals_ = 0
    for _ in range(reader.uleb()):
        reader.name()
        reader.name()
        kind = reader.byte()
        if kind == 0x00:  # func: type index
            reader.uleb()
        elif kind == 0x01:  # table: reftype, limits
            reader.byte()
            reader.limits()
        elif kind == 0x02:
            reader.limits()
            memories += 1
        elif kind == 0x03:  # global: valtype (one byte without GC), mutability
            reader.byte()
            reader.byte()
            globals_ += 1
        elif kind == 0x04:  # tag: attribute, type index
            reader.byte()
            reader.uleb()
        else:
            raise InvalidWasmError(f"unknown import kind {kind:#x}")
    return memories, globals_


def _exports(payload: bytes) -> list[tuple[str, int, int]]:
    reader = Reader(payload)
    return [(reader.name(), reader.byte(), reader.uleb()) for _ in range(reader.uleb())]


def export_everything(wasm: bytes) -> Probes:
    """Rewrites `wasm` so that every memory and global it defines is exported.

    Exports the module already has are kept (names and order); each defined memory or
    global without one gets `__tensorwasm_probe_memory_<index>` or
    `__tensorwasm_probe_global_<index>`.

    Raises:
        InvalidWasmError: the bytes are not a well-formed module binary.
    """
    sections = split_sections(wasm)
    imported_memories = imported_globals = defined_memories = defined_globals = 0
    exports: list[tuple[str, int, int]] = []
    for section_id, payload in sections:
        if section_id == _SECTION_IMPORT:
            imported_memories, imported_globals = _imported_counts(payload)
        elif section_id == _SECTION_MEMORY:
            defined_memories = Reader(payload).uleb()
        elif section_id == _SECTION_GLOBAL:
            defined_globals = Reader(payload).uleb()
        elif section_id == _SECTION_EXPORT:
            exports = _exports(payload)
    named = {(kind, index): name for name, kind, index in reversed(exports)}
    memories = _probes(_KIND_MEMORY, "memory", imported_memories, defined_memories, named)
    globals_ = _probes(_KIND_GLOBAL, "global", imported_globals, defined_globals, named)
    added = [
        (probe.probe_name, kind, probe.index)
        for kind, probes in ((_KIND_MEMORY, memories), (_KIND_GLOBAL, globals_))
        for probe in probes
        if probe.exported_as is None
    ]
    entries = b"".join(
        encode_name(name) + bytes([kind]) + uleb(index) for name, kind, index in exports + added
    )
    export_payload = uleb(len(exports) + len(added)) + entries
    rebuilt = _with_export_section(sections, export_payload)
    return Probes(join_sections(rebuilt), memories, globals_)


def _probes(
    kind: int, noun: str, imported: int, defined: int, named: dict[tuple[int, int], str]
) -> tuple[Probe, ...]:
    probes = []
    for index in range(imported, imported + defined):
        exported_as = named.get((kind, index))
        probe_name = exported_as or f"{PROBE_PREFIX}{noun}_{index}"
        probes.append(Probe(index, exported_as, probe_name))
    return tuple(probes)


def _with_export_section(sections: list[Section], export_payload: bytes) -> list[Section]:
    """The sections with the export section replaced, or inserted in its place in order."""
    if any(sid == _SECTION_EXPORT for sid, _ in sections):
        return [
            (sid, export_payload if sid == _SECTION_EXPORT else payload)
            for sid, payload in sections
        ]
    at = 0
    for position, (sid, _) in enumerate(sections):
        if sid in _BEFORE_EXPORT:
            at = position + 1
    return [*sections[:at], (_SECTION_EXPORT, export_payload), *sections[at:]]
