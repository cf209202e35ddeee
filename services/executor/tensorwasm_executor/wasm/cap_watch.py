"""Which calls ran into the memory or table cap: `memory.grow`/`table.grow` routed through
counting wrappers.

wasmtime enforces the store's caps by failing the grow (the guest sees -1), and wasmtime-py
offers no limiter callback to tell the host. So before compiling, every `memory.grow m` and
`table.grow t` in the module's code is replaced by a call to a wrapper function appended to
the module: the wrapper grows as before and, when the grow failed although the memory's
(table's) own declared maximum allowed it, adds one to an exported counter global. Those
failures are the executor's cap (or the host refusing memory); a grow past the module's own
maximum is the guest's business and is not counted.

Appended functions, types and globals take the next free index of their index space, so no
existing index moves and nothing else in the module changes. The guest sees the same -1 or
old size it always did. A module this rewriter cannot decode (a proposal whose opcodes it
does not know, e.g. GC) is compiled unchanged and simply reports no cap hits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tensorwasm_common.errors import InvalidWasmError

from tensorwasm_executor.wasm.binary import (
    Reader,
    Section,
    encode_name,
    join_sections,
    sleb,
    split_sections,
    uleb,
)

__all__ = ["MEMORY_COUNTER", "TABLE_COUNTER", "VERSION", "instrument"]

# Part of the engine fingerprint: artifacts of a differently instrumented module are not reused.
VERSION = "cap-watch-1"
MEMORY_COUNTER = "__tensorwasm_memory_cap_hits"
TABLE_COUNTER = "__tensorwasm_table_cap_hits"

_TYPE, _IMPORT, _FUNCTION, _TABLE, _MEMORY, _GLOBAL, _EXPORT, _CODE, _TAG = (
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    10,
    13,
)
_SECTION_ORDER = (_TYPE, _IMPORT, _FUNCTION, _TABLE, _MEMORY, _TAG, _GLOBAL, _EXPORT)
_KIND_FUNC, _KIND_TABLE, _KIND_MEMORY, _KIND_GLOBAL, _KIND_TAG = 0, 1, 2, 3, 4
_I32, _I64 = 0x7F, 0x7E
_FUNCREF, _EXTERNREF = 0x70, 0x6F
_MEMORY_GROW, _CALL, _PREFIX_FC = 0x40, 0x10, 0xFC
_TABLE_GROW = 15  # 0xFC 15: table.grow
_FLAG_MAX, _FLAG_64 = 0x01, 0x04


class _UndecodableError(Exception):
    """The module uses an instruction or construct this rewriter does not know."""


@dataclass
class _Space:
    """What the rewrite needs of a memory or table: its index, declared maximum and, for a
    table, its element type (None: a memory)."""

    index: int
    maximum: int
    elem: int | None = None
    is_64: bool = False


def instrument(wasm: bytes) -> bytes | None:
    """The module with its grows counted, or None when it has none or cannot be rewritten.

    `wasm` must already be valid (the caller validated it); the result is valid too.
    """
    try:
        return _instrument(wasm)
    except (_UndecodableError, InvalidWasmError):
        return None


def _instrument(wasm: bytes) -> bytes | None:
    sections = split_sections(wasm)
    payload = {sid: data for sid, data in sections if sid != 0}
    if _CODE not in payload or _FUNCTION not in payload or _TYPE not in payload:
        return None
    imports = _read_imports(payload.get(_IMPORT, b""))
    memories = imports.memories + _read_spaces(
        payload.get(_MEMORY, b""), None, len(imports.memories)
    )
    tables = imports.tables + _read_tables(payload.get(_TABLE, b""), len(imports.tables))
    exports = _read_exports(payload.get(_EXPORT, b""))
    if MEMORY_COUNTER in exports or TABLE_COUNTER in exports:
        return None  # never two exports of one name
    defined_funcs = Reader(payload[_FUNCTION]).uleb()
    grows = _find_grows(payload[_CODE])
    if not any(grows):
        return None
    used_memories = sorted(
        {index for body in grows for kind, index, _, _ in body if kind == "memory"}
    )
    used_tables = sorted({index for body in grows for kind, index, _, _ in body if kind == "table"})
    # Wrappers only for 32-bit memories and tables of funcref/externref; other grows stay.
    wrap_memories = [m for m in used_memories if not memories[m].is_64]
    wrap_tables = [
        t for t in used_tables if not tables[t].is_64 and tables[t].elem in (_FUNCREF, _EXTERNREF)
    ]
    if not wrap_memories and not wrap_tables:
        return None

    type_count = _type_count(payload[_TYPE])
    next_func = imports.funcs + defined_funcs
    next_global = imports.globals + _count(payload.get(_GLOBAL, b""))
    new_types: list[bytes] = []
    new_funcs: list[int] = []  # type index of each appended function
    new_bodies: list[bytes] = []
    new_globals: list[bytes] = []
    new_exports: list[bytes] = []
    wrapper_of: dict[tuple[str, int], int] = {}

    if wrap_memories:
        counter = next_global + len(new_globals)
        new_globals.append(bytes([_I32, 0x01, 0x41, 0x00, 0x0B]))  # (mut i32) (i32.const 0)
        new_exports.append(encode_name(MEMORY_COUNTER) + bytes([_KIND_GLOBAL]) + uleb(counter))
        type_index = type_count + len(new_types)
        new_types.append(bytes([0x60, 1, _I32, 1, _I32]))
        for index in wrap_memories:
            wrapper_of[("memory", index)] = next_func + len(new_funcs)
            new_funcs.append(type_index)
            new_bodies.append(_memory_wrapper(index, memories[index].maximum, counter))
    if wrap_tables:
        counter = next_global + len(new_globals)
        new_globals.append(bytes([_I32, 0x01, 0x41, 0x00, 0x0B]))
        new_exports.append(encode_name(TABLE_COUNTER) + bytes([_KIND_GLOBAL]) + uleb(counter))
        for index in wrap_tables:
            elem = tables[index].elem
            assert elem is not None
            type_index = type_count + len(new_types)
            new_types.append(bytes([0x60, 2, elem, _I32, 1, _I32]))
            wrapper_of[("table", index)] = next_func + len(new_funcs)
            new_funcs.append(type_index)
            new_bodies.append(_table_wrapper(index, tables[index].maximum, counter))

    code = _rewrite_code(payload[_CODE], grows, wrapper_of, new_bodies)
    replaced = {
        _TYPE: _append_vec(payload[_TYPE], new_types),
        _FUNCTION: _append_vec(payload[_FUNCTION], [uleb(t) for t in new_funcs]),
        _GLOBAL: _append_vec(payload.get(_GLOBAL, b"\x00"), new_globals),
        _EXPORT: _append_vec(payload.get(_EXPORT, b"\x00"), new_exports),
        _CODE: code,
    }
    return join_sections(_with_sections(sections, replaced))


@dataclass
class _Imports:
    funcs: int
    globals: int
    memories: list[_Space]
    tables: list[_Space]


def _read_imports(data: bytes) -> _Imports:
    imports = _Imports(0, 0, [], [])
    if not data:
        return imports
    reader = Reader(data)
    for _ in range(reader.uleb()):
        reader.name()
        reader.name()
        kind = reader.byte()
        if kind == _KIND_FUNC:
            reader.uleb()
            imports.funcs += 1
        elif kind == _KIND_TABLE:
            elem = _reftype(reader)
            imports.tables.append(_space(len(imports.tables), reader.limits(), elem))
        elif kind == _KIND_MEMORY:
            imports.memories.append(_space(len(imports.memories), reader.limits(), None))
        elif kind == _KIND_GLOBAL:
            _valtype(reader)
            reader.byte()
            imports.globals += 1
        elif kind == _KIND_TAG:
            reader.byte()
            reader.uleb()
        else:
            raise _UndecodableError(f"import kind {kind:#x}")
    return imports


def _space(index: int, limits: tuple[int, int, int | None], elem: int | None) -> _Space:
    flags, _, maximum = limits
    is_64 = bool(flags & _FLAG_64)
    if maximum is None:
        # No declared maximum: the index type's (a memory in 64 KiB pages; custom page
        # sizes declare a maximum in practice, and a larger bound only counts more).
        maximum = (1 << 16) if elem is None else (1 << 32) - 1
    return _Space(index, maximum, elem, is_64)


def _read_spaces(data: bytes, elem: int | None, first: int) -> list[_Space]:
    if not data:
        return []
    reader = Reader(data)
    return [_space(first + i, reader.limits(), elem) for i in range(reader.uleb())]


def _read_tables(data: bytes, first: int) -> list[_Space]:
    if not data:
        return []
    reader = Reader(data)
    tables = []
    for i in range(reader.uleb()):
        if reader.data[reader.position] == 0x40:  # a table with an initialiser expression
            raise _UndecodableError("table with an initialiser")
        elem = _reftype(reader)
        tables.append(_space(first + i, reader.limits(), elem))
    return tables


def _read_exports(data: bytes) -> set[str]:
    if not data:
        return set()
    reader = Reader(data)
    names = set()
    for _ in range(reader.uleb()):
        names.add(reader.name())
        reader.byte()
        reader.uleb()
    return names


def _type_count(data: bytes) -> int:
    """The number of types; only plain function types are supported (no GC rec groups)."""
    reader = Reader(data)
    count = reader.uleb()
    for _ in range(count):
        if reader.byte() != 0x60:
            raise _UndecodableError("a non-function type")
        for _ in range(2):  # params, results
            for _ in range(reader.uleb()):
                _valtype(reader)
    return count


def _count(data: bytes) -> int:
    return Reader(data).uleb() if data else 0


def _reftype(reader: Reader) -> int:
    """A reference type; returns its one-byte code (0 for a multi-byte `(ref null? ht)`)."""
    code = reader.byte()
    if code in (0x63, 0x64):
        reader.sleb()
        return 0
    return code


def _valtype(reader: Reader) -> None:
    if reader.byte() in (0x63, 0x64):
        reader.sleb()


def _append_vec(data: bytes, items: list[bytes]) -> bytes:
    """A vector payload (count + entries) with `items` appended."""
    if not items:
        return data
    reader = Reader(data)
    count = reader.uleb()
    return uleb(count + len(items)) + data[reader.position :] + b"".join(items)


def _with_sections(sections: list[Section], replaced: dict[int, bytes]) -> list[Section]:
    """`sections` with payloads replaced, and any replaced section they lack inserted at its
    place in the standard order (custom sections keep their positions)."""
    out = [(sid, replaced.get(sid, data)) for sid, data in sections]
    present = {sid for sid, _ in sections}
    for sid in (_GLOBAL, _EXPORT):
        if sid in present or replaced.get(sid, b"\x00") == b"\x00":
            continue
        before = _SECTION_ORDER[: _SECTION_ORDER.index(sid)]
        at = 0
        for position, (other, _) in enumerate(out):
            if other in before:
                at = position + 1
        out.insert(at, (sid, replaced[sid]))
        present.add(sid)
    return out


# (kind, index, start, end): one grow instruction's bytes in a function body.
_Grow = tuple[str, int, int, int]


def _find_grows(code: bytes) -> list[list[_Grow]]:
    """Per function body, the grow instructions in it (offsets within the code payload)."""
    reader = Reader(code)
    found: list[list[_Grow]] = []
    for _ in range(reader.uleb()):
        size = reader.uleb()
        end = reader.position + size
        if end > len(code):
            raise InvalidWasmError("truncated function body")
        for _ in range(reader.uleb()):  # local declarations
            reader.uleb()
            _valtype(reader)
        grows: list[_Grow] = []
        while reader.position < end:
            _instruction(reader, grows)
        if reader.position != end:
            raise _UndecodableError("a function body overruns its size")
        found.append(grows)
    return found


def _rewrite_code(
    code: bytes,
    grows: list[list[_Grow]],
    wrapper_of: dict[tuple[str, int], int],
    appended: list[bytes],
) -> bytes:
    reader = Reader(code)
    count = reader.uleb()
    bodies = []
    for body_grows in grows:
        size = reader.uleb()
        start, end = reader.position, reader.position + size
        reader.position = end
        if not any((kind, index) in wrapper_of for kind, index, _, _ in body_grows):
            bodies.append(uleb(size) + code[start:end])
            continue
        parts, at = [], start
        for kind, index, grow_start, grow_end in body_grows:
            wrapper = wrapper_of.get((kind, index))
            if wrapper is None:
                continue
            parts.append(code[at:grow_start])
            parts.append(bytes([_CALL]) + uleb(wrapper))
            at = grow_end
        parts.append(code[at:end])
        body = b"".join(parts)
        bodies.append(uleb(len(body)) + body)
    bodies.extend(uleb(len(body)) + body for body in appended)
    return uleb(count + len(appended)) + b"".join(bodies)


def _memory_wrapper(memory: int, maximum: int, counter: int) -> bytes:
    """`(func (param $delta i32) (result i32) (local $old i32))`: grow; on -1 with
    size + delta within the declared maximum, count it; return the grow's result."""
    m = uleb(memory)
    return (
        b"\x01\x01\x7f"  # one local: i32
        + b"\x20\x00\x40" + m + b"\x22\x01"  # local.get 0; memory.grow; local.tee 1
        + b"\x41\x7f\x46\x04\x40"  # i32.const -1; i32.eq; if
        + b"\x3f" + m + b"\xad\x20\x00\xad\x7c"  # memory.size; extend; delta; extend; add
        + _within(maximum, counter)
        + b"\x0b\x20\x01\x0b"  # end; local.get 1; end
    )  # fmt: skip


def _table_wrapper(table: int, maximum: int, counter: int) -> bytes:
    """`(func (param $init ref) (param $delta i32) (result i32) (local $old i32))`, the
    same as `_memory_wrapper` for `table.grow`."""
    t = uleb(table)
    return (
        b"\x01\x01\x7f"
        + b"\x20\x00\x20\x01\xfc\x0f" + t + b"\x22\x02"  # init; delta; table.grow; tee 2
        + b"\x41\x7f\x46\x04\x40"
        + b"\xfc\x10" + t + b"\xad\x20\x01\xad\x7c"  # table.size; extend; delta; extend; add
        + _within(maximum, counter)
        + b"\x0b\x20\x02\x0b"
    )  # fmt: skip


def _within(maximum: int, counter: int) -> bytes:
    """`i64.const max; i64.le_u; if counter += 1 end` (the requested size is on the stack)."""
    g = uleb(counter)
    return (
        b"\x42" + sleb(maximum) + b"\x58\x04\x40"
        + b"\x23" + g + b"\x41\x01\x6a\x24" + g + b"\x0b"
    )  # fmt: skip


# --- the instruction decoder: only what it takes to step over each instruction ---


def _no_immediate(reader: Reader) -> None:
    return None


def _u32(reader: Reader) -> None:
    reader.uleb()


def _u32_pair(reader: Reader) -> None:
    reader.uleb()
    reader.uleb()


def _signed(reader: Reader) -> None:
    reader.sleb()


def _f32(reader: Reader) -> None:
    reader.skip(4)


def _f64(reader: Reader) -> None:
    reader.skip(8)


def _br_table(reader: Reader) -> None:
    for _ in range(reader.uleb() + 1):
        reader.uleb()


def _select_t(reader: Reader) -> None:
    for _ in range(reader.uleb()):
        _valtype(reader)


def _try_table(reader: Reader) -> None:
    _blocktype(reader)
    for _ in range(reader.uleb()):
        if reader.byte() in (0x00, 0x01):  # catch, catch_ref: a tag index, then the label
            reader.uleb()
        reader.uleb()


def _instruction(reader: Reader, grows: list[_Grow]) -> None:
    start = reader.position
    op = reader.byte()
    if op == _MEMORY_GROW:
        index = reader.uleb()
        grows.append(("memory", index, start, reader.position))
    elif op == _PREFIX_FC:
        _prefix_fc(reader, start, grows)
    else:
        immediate = _ONE_BYTE.get(op)
        if immediate is None:
            raise _UndecodableError(f"opcode {op:#x}")
        immediate(reader)


def _blocktype(reader: Reader) -> None:
    if reader.data[reader.position : reader.position + 1] in (b"\x63", b"\x64"):
        reader.byte()
    reader.sleb()


def _memarg(reader: Reader) -> None:
    flags = reader.uleb()
    if flags & 0x40:  # multi-memory: a memory index follows
        reader.uleb()
    reader.uleb()


def _prefix_fc(reader: Reader, start: int, grows: list[_Grow]) -> None:
    sub = reader.uleb()
    if sub <= 7 or 19 <= sub <= 22:  # saturating truncations; wide arithmetic
        return
    if sub in (8, 10, 12, 14):  # memory.init, memory.copy, table.init, table.copy
        reader.uleb()
        reader.uleb()
    elif sub in (9, 11, 13, 16, 17):  # data.drop, memory.fill, elem.drop, table.size/fill
        reader.uleb()
    elif sub == _TABLE_GROW:
        index = reader.uleb()
        grows.append(("table", index, start, reader.position))
    else:
        raise _UndecodableError(f"opcode 0xfc {sub}")


def _prefix_fd(reader: Reader) -> None:
    sub = reader.uleb()
    if sub <= 11 or sub in (92, 93):  # v128 loads and stores
        _memarg(reader)
    elif sub in (12, 13):  # v128.const, i8x16.shuffle
        reader.skip(16)
    elif 21 <= sub <= 34:  # extract and replace lane
        reader.skip(1)
    elif 84 <= sub <= 91:  # load and store lane
        _memarg(reader)
        reader.skip(1)
    elif sub > 0x113:
        raise _UndecodableError(f"opcode 0xfd {sub}")


def _prefix_fe(reader: Reader) -> None:
    sub = reader.uleb()
    if sub == 0x03:  # atomic.fence
        reader.skip(1)
    elif sub <= 0x02 or 0x10 <= sub <= 0x4E:
        _memarg(reader)
    else:
        raise _UndecodableError(f"opcode 0xfe {sub}")


# The immediates of each one-byte opcode (an opcode not here is undecodable).
_Immediate = Callable[[Reader], None]
_ONE_BYTE: dict[int, _Immediate] = {
    **dict.fromkeys((0x00, 0x01, 0x05, 0x0A, 0x0B, 0x0F, 0x19, 0x1A, 0x1B), _no_immediate),
    **dict.fromkeys((0xD1, 0xD3, 0xD4), _no_immediate),
    **dict.fromkeys(range(0x45, 0xC5), _no_immediate),  # numeric instructions
    **dict.fromkeys((0x07, 0x08, 0x09, 0x0C, 0x0D, 0x10, 0x12, 0x14, 0x15, 0x18), _u32),
    **dict.fromkeys((0xD2, 0xD5, 0xD6, 0x3F), _u32),  # ref.func, br_on_(non_)null, memory.size
    **dict.fromkeys(range(0x20, 0x27), _u32),  # local.*, global.*, table.get/set
    **dict.fromkeys((0x11, 0x13), _u32_pair),  # call_indirect, return_call_indirect
    **dict.fromkeys(range(0x28, 0x3F), _memarg),  # loads, stores
    **dict.fromkeys((0x02, 0x03, 0x04, 0x06), _blocktype),
    **dict.fromkeys((0x41, 0x42, 0xD0), _signed),  # i32/i64.const, ref.null heap type
    0x43: _f32,
    0x44: _f64,
    0x0E: _br_table,
    0x1C: _select_t,
    0x1F: _try_table,
    0xFD: _prefix_fd,
    0xFE: _prefix_fe,
}
