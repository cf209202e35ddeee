"""Parses PTX text into entries: parameters, registers, shared and local variables and the
instruction list (labels resolved later by the translator).

Hand-written because no PTX parser exists for Python; it reads the subset of the grammar
that nvcc and our emitters write: module directives, `.entry` headers with their
parameters and performance directives, nested `{ }` scopes (nvcc wraps inline-asm in
them) with their own register declarations, labels and predicated instructions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class PtxSyntaxError(ValueError):
    """The text is not PTX this parser understands (malformed_ptx)."""


class PtxUnsupportedError(ValueError):
    """Well-formed PTX that uses something the executor does not run (not_available)."""


# Scalar PTX types and the NumPy dtype their values are held in (f16 values live in
# 16-bit registers as raw bits; `.pred` is a bool).
TYPES: dict[str, np.dtype[np.generic]] = {
    name: np.dtype(code)
    for name, code in {
        "b8": "u1", "u8": "u1", "s8": "i1",
        "b16": "u2", "u16": "u2", "s16": "i2", "f16": "f2",
        "b32": "u4", "u32": "u4", "s32": "i4", "f32": "f4", "f16x2": "u4",
        "b64": "u8", "u64": "u8", "s64": "i8", "f64": "f8",
        "pred": "?",
    }.items()
}  # fmt: skip

# Declared registers an entry may have (nvcc's largest kernels declare a few thousand).
MAX_REGISTERS = 1 << 16
_LINE_DIRECTIVES = (".version", ".target", ".address_size", ".file", ".loc")
_OPERAND_NAMES = re.compile(r"%?[A-Za-z_$][\w$]*")
_IDENT = r"[A-Za-z_$%][\w$]*"
_LABEL = re.compile(rf"^({_IDENT})$")
_RANGE = re.compile(rf"^({_IDENT})<(\d+)>$")
_ARRAY = re.compile(rf"^({_IDENT})((?:\[\d*\])+)$")


@dataclass(frozen=True)
class Register:
    """One declared register: its slot in the register file and the dtype it holds."""

    slot: int
    name: str
    dtype: np.dtype[np.generic]


@dataclass(frozen=True)
class Param:
    """A kernel parameter: its name, PTX type, size and offset in the parameter block."""

    name: str
    type_name: str
    size_bytes: int
    offset_bytes: int
    is_array: bool


@dataclass(frozen=True)
class Variable:
    """A `.shared` or `.local` variable: its offset in its state space and its size."""

    name: str
    space: str
    offset_bytes: int
    size_bytes: int


@dataclass(frozen=True)
class Instruction:
    """One instruction as written, with its registers already resolved by scope."""

    index: int
    line: int
    text: str
    guard: str | None  # "%p" or "!%p" (resolved to a register below)
    guard_register: Register | None
    guard_negated: bool
    opcode: str
    operands: tuple[str, ...]
    registers: dict[str, Register] = field(repr=False)  # name -> register, as in scope here


@dataclass
class Entry:
    """One `.entry` of a module, ready to translate."""

    name: str
    params: list[Param]
    registers: list[Register]
    variables: dict[str, Variable]
    shared_static_bytes: int
    local_bytes: int
    dynamic_shared: str | None  # the `.extern .shared` symbol, placed after the statics
    statements: list[Instruction | str]  # instructions and label names, in order
    # The module's `.global`/`.const` variables: name -> offset in `globals_image`.
    module_variables: dict[str, int] = field(default_factory=dict)


@dataclass
class Module:
    """A parsed PTX module: its entries by name, and the initial bytes of its `.global`
    and `.const` variables (each entry sees them at `MODULE_BASE` + their offset)."""

    entries: dict[str, Entry]
    variables: dict[str, int] = field(default_factory=dict)
    globals_image: bytearray = field(default_factory=bytearray)


@dataclass(frozen=True)
class _Token:
    kind: str  # "stmt", "label", "open", "close", "header"
    text: str
    line: int


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


_PIECES = re.compile(r"[^{};:\n]+|.", re.S)


def _tokens(text: str) -> list[_Token]:  # noqa: PLR0912, PLR0915 - one branch per token kind
    """Statements, labels, scope braces and function headers, with their line numbers."""
    tokens: list[_Token] = []
    current: list[str] = []
    line = 1
    start_line = 1
    depth = 0  # braces inside a statement: vector operands, initialisers
    pieces = _PIECES.findall(text)
    for number, piece in enumerate(pieces):
        if len(piece) > 1 or piece not in "{};:\n":
            if not current and piece.strip():
                start_line = line
            if current or piece.strip():
                current.append(piece)
            continue
        pending = "".join(current).strip() if current else ""
        if piece == "\n":
            if depth == 0 and pending.startswith(_LINE_DIRECTIVES):
                tokens.append(_Token("stmt", pending, start_line))  # these end at the line
                current = []
            elif current:
                current.append(" ")
            line += 1
        elif piece == "{":
            if depth == 0 and not pending:
                tokens.append(_Token("open", "", line))
                current = []
            elif depth == 0 and re.search(r"\.(entry|func)\b", pending):
                tokens.append(_Token("header", pending, start_line))
                tokens.append(_Token("open", "", line))
                current = []
            else:
                depth += 1
                current.append(piece)
        elif piece == "}":
            if depth > 0:
                depth -= 1
                current.append(piece)
            elif pending:
                raise PtxSyntaxError(f"line {line}: `{pending}` is missing its `;`")
            else:
                tokens.append(_Token("close", "", line))
                current = []
        elif piece == ";" and depth == 0:
            if pending:
                tokens.append(_Token("stmt", pending, start_line))
            current = []
        elif piece == ":" and depth == 0 and _LABEL.match(pending):
            following = pieces[number + 1] if number + 1 < len(pieces) else ""
            previous = pieces[number - 1] if number else ""
            if following == ":" or previous == ":":
                current.append(piece)
            else:
                tokens.append(_Token("label", pending, start_line))
                current = []
        else:
            current.append(piece)
    if "".join(current).strip():
        raise PtxSyntaxError(f"line {start_line}: the text ends inside a statement")
    return tokens


def _split_operands(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def _type_size(type_name: str, line: int) -> int:
    dtype = TYPES.get(type_name)
    if dtype is None or type_name == "pred":
        raise PtxUnsupportedError(f"line {line}: the type .{type_name}")
    return dtype.itemsize


def _align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


class _EntryBuilder:
    def __init__(
        self,
        name: str,
        params: list[Param],
        module_shared: list[tuple[str, int, int]],
        dynamic_shared: str | None,
    ) -> None:
        self.entry = Entry(name, params, [], {}, 0, 0, dynamic_shared, [])
        self.scopes: list[dict[str, Register]] = [{}]
        self.instructions = 0
        for var_name, align, size in module_shared:
            self._place(var_name, "shared", align, size)

    def _place(self, name: str, space: str, align: int, size: int) -> None:
        entry = self.entry
        if space == "shared":
            offset = _align_up(entry.shared_static_bytes, align)
            entry.shared_static_bytes = offset + size
        else:
            offset = _align_up(entry.local_bytes, align)
            entry.local_bytes = offset + size
        entry.variables[name] = Variable(name, space, offset, size)

    def declare_registers(self, text: str, line: int) -> None:
        words = text.split(None, 2)
        if len(words) < 3 or not words[1].startswith("."):
            raise PtxSyntaxError(f"line {line}: `{text}` is not a register declaration")
        type_name = words[1][1:]
        if type_name.startswith("v"):
            raise PtxUnsupportedError(f"line {line}: vector registers ({text})")
        dtype = TYPES.get(type_name)
        if dtype is None:
            raise PtxUnsupportedError(f"line {line}: registers of type .{type_name}")
        for item in _split_operands(words[2]):
            ranged = _RANGE.match(item)
            if ranged and len(self.entry.registers) + int(ranged.group(2)) > MAX_REGISTERS:
                raise PtxSyntaxError(f"line {line}: more than {MAX_REGISTERS} registers")
            names = (
                [f"{ranged.group(1)}{i}" for i in range(int(ranged.group(2)))] if ranged else [item]
            )
            for name in names:
                if not re.fullmatch(_IDENT, name):
                    raise PtxSyntaxError(f"line {line}: bad register name {name!r}")
                register = Register(len(self.entry.registers), name, dtype)
                self.entry.registers.append(register)
                self.scopes[-1][name] = register

    def declare_variable(self, text: str, line: int) -> None:
        words = text.split()
        space = words[0][1:]
        align = 0
        type_name = ""
        declarator = ""
        index = 1
        while index < len(words):
            word = words[index]
            if word == ".align":
                align = int(words[index + 1])
                index += 2
                continue
            if word.startswith(".") and word[1:] in TYPES:
                type_name = word[1:]
            elif not word.startswith("."):
                declarator = "".join(words[index:])
                break
            index += 1
        if "=" in declarator:
            raise PtxUnsupportedError(f"line {line}: an initialised .{space} variable")
        match = _ARRAY.match(declarator) or re.fullmatch(rf"({_IDENT})()", declarator)
        if not type_name or not match:
            raise PtxSyntaxError(f"line {line}: `{text}` is not a variable declaration")
        count = 1
        for dimension in re.findall(r"\[(\d*)\]", match.group(2)):
            if not dimension:
                raise PtxSyntaxError(f"line {line}: an array without a size: `{text}`")
            count *= int(dimension)
        size = _type_size(type_name, line)
        self._place(match.group(1), space, align or size, size * count)

    def instruction(self, text: str, line: int) -> None:
        guard = None
        body = text
        if body.startswith("@"):
            guard, _, body = body.partition(" ")
            body = body.strip()
        opcode, _, rest = body.partition(" ")
        if not re.fullmatch(r"[a-z][\w.:]*", opcode):
            raise PtxSyntaxError(f"line {line}: `{text}` is not an instruction")
        guard_register = None
        negated = False
        if guard is not None:
            name = guard[1:]
            negated = name.startswith("!")
            name = name.lstrip("!")
            guard_register = self.lookup(name)
            if guard_register is None or guard_register.dtype != np.bool_:
                raise PtxSyntaxError(f"line {line}: the guard {guard} is not a predicate")
        scope: dict[str, Register] = {}
        for name in _OPERAND_NAMES.findall(rest):
            register = self.lookup(name)
            if register is not None:
                scope[name] = register
        statement = Instruction(
            index=self.instructions,
            line=line,
            text=text,
            guard=guard,
            guard_register=guard_register,
            guard_negated=negated,
            opcode=opcode,
            operands=tuple(_split_operands(rest)),
            registers=scope,
        )
        self.entry.statements.append(statement)
        self.instructions += 1

    def lookup(self, name: str) -> Register | None:
        for level in reversed(self.scopes):
            if name in level:
                return level[name]
        return None


def _parse_params(header: str, line: int) -> tuple[str, list[Param]]:
    match = re.search(rf"\.entry\s+({_IDENT})\s*(?:\((.*?)\))?", header, flags=re.S)
    if match is None:
        raise PtxSyntaxError(f"line {line}: a malformed .entry header")
    params: list[Param] = []
    offset = 0
    for item in _split_operands(match.group(2) or ""):
        words = item.split()
        if not words or words[0] != ".param":
            raise PtxSyntaxError(f"line {line}: `{item}` is not a .param declaration")
        align = 0
        type_name = ""
        name = ""
        index = 1
        while index < len(words):
            word = words[index]
            if word == ".align":
                align = int(words[index + 1])
                index += 2
                continue
            if word.startswith(".") and word[1:] in TYPES:
                type_name = word[1:]
            elif not word.startswith("."):
                name = word
            index += 1
        array = _ARRAY.match(name)
        size = _type_size(type_name, line) if type_name else 0
        if array:
            count = 1
            for dimension in re.findall(r"\[(\d+)\]", array.group(2)):
                count *= int(dimension)
            name = array.group(1)
            size *= count
        if not name or not size:
            raise PtxSyntaxError(f"line {line}: `{item}` is not a .param declaration")
        offset = _align_up(offset, align or min(size, 8))
        params.append(Param(name, type_name, size, offset, array is not None))
        offset += size
    return match.group(1), params


def parse_module(text: str) -> Module:  # noqa: PLR0912 - one branch per instruction form
    """Parses a PTX module.

    Raises:
        PtxSyntaxError: the text is not well-formed PTX.
        PtxUnsupportedError: a declaration the executor cannot hold.
    """
    tokens = _tokens(_strip_comments(text))
    module = Module({})
    module_shared: list[tuple[str, int, int]] = []
    dynamic_shared: str | None = None
    seen_version = False
    position = 0
    while position < len(tokens):
        token = tokens[position]
        position += 1
        if token.kind == "stmt":
            words = token.text.split()
            if words[0] == ".version":
                seen_version = True
            elif words[0] in (".target", ".address_size", ".file", ".section"):
                if words[0] == ".address_size" and words[1:] != ["64"]:
                    raise PtxUnsupportedError(f"line {token.line}: .address_size {words[1:]}")
            elif ".func" in words or ".entry" in words:
                continue  # a prototype (`.extern .func ...;`)
            elif ".shared" in words and words[0] in (".extern", ".visible", ".shared", ".weak"):
                rest = token.text[token.text.index(".shared") :]
                if words[0] == ".extern":
                    dynamic_shared = re.findall(_IDENT, rest.split()[-1])[0]
                else:
                    builder = _EntryBuilder("", [], [], None)
                    builder.declare_variable(rest, token.line)
                    variable = builder.entry.variables.popitem()[1]
                    align = int(m.group(1)) if (m := re.search(r"\.align\s+(\d+)", rest)) else 4
                    module_shared.append((variable.name, align, variable.size_bytes))
            elif ".global" in words or ".const" in words:
                _module_variable(module, token.text, token.line)
            else:
                raise PtxSyntaxError(f"line {token.line}: unexpected `{token.text}`")
            continue
        if token.kind == "header":
            if position >= len(tokens) or tokens[position].kind != "open":
                raise PtxSyntaxError(f"line {token.line}: a header without a body")
            position += 1
            body_end = _scope_end(tokens, position, token.line)
            if re.search(r"\.entry\b", token.text):
                name, params = _parse_params(token.text, token.line)
                module.entries[name] = _build_entry(
                    name, params, tokens[position:body_end], module_shared, dynamic_shared
                )
                module.entries[name].module_variables = module.variables
            position = body_end + 1
            continue
        raise PtxSyntaxError(f"line {token.line}: unexpected {token.kind} at module scope")
    if not seen_version:
        raise PtxSyntaxError("the module has no .version directive")
    return module


def _module_variable(module: Module, text: str, line: int) -> None:
    """Places a module-scope `.global`/`.const` variable (with its initialiser, if any)."""
    declaration, _, initialiser = text.partition("=")
    words = declaration.split()
    if words[0] == ".extern":
        raise PtxUnsupportedError(f"line {line}: an external module variable ({text})")
    align = 0
    type_name = ""
    declarator = ""
    index = 0
    while index < len(words):
        word = words[index]
        if word == ".align":
            align = int(words[index + 1])
            index += 2
            continue
        if word.startswith(".") and word[1:] in TYPES:
            type_name = word[1:]
        elif not word.startswith("."):
            declarator = "".join(words[index:])
            break
        index += 1
    match = _ARRAY.match(declarator) or re.fullmatch(rf"({_IDENT})()", declarator)
    if not type_name or not match:
        raise PtxSyntaxError(f"line {line}: `{text}` is not a variable declaration")
    dtype = TYPES[type_name]
    count = 1
    for dimension in re.findall(r"\[(\d*)\]", match.group(2)):
        if not dimension:
            raise PtxUnsupportedError(f"line {line}: an array without a size: `{text}`")
        count *= int(dimension)
    values = [v.strip() for v in initialiser.strip().strip("{}").split(",") if v.strip()]
    if len(values) > count:
        raise PtxSyntaxError(f"line {line}: more initialisers than elements in `{text}`")
    data = bytearray(dtype.itemsize * count)
    for position, value in enumerate(values):
        data[position * dtype.itemsize : (position + 1) * dtype.itemsize] = _constant_bytes(
            value, dtype, line
        )
    image = module.globals_image
    offset = _align_up(len(image), max(align or dtype.itemsize, 1))
    image.extend(bytes(offset - len(image)))
    module.variables[match.group(1)] = offset
    image.extend(data)


def _constant_bytes(text: str, dtype: np.dtype[Any], line: int) -> bytes:
    """The bytes of one initialiser value of type `dtype`."""
    try:
        if text[:2] in ("0f", "0F") and len(text) == 10:
            bits = int(text[2:], 16)
            number = float(np.array(bits, np.uint32).view(np.float32))
        elif text[:2] in ("0d", "0D") and len(text) == 18:
            number = float(np.array(int(text[2:], 16), np.uint64).view(np.float64))
        elif dtype.kind == "f":
            number = float(text)
        else:
            integer = int(text.rstrip("U"), 0)
            return (integer & ((1 << (8 * dtype.itemsize)) - 1)).to_bytes(dtype.itemsize, "little")
    except ValueError:
        raise PtxUnsupportedError(f"line {line}: the initialiser `{text}`") from None
    if dtype.kind != "f":
        raise PtxUnsupportedError(f"line {line}: a float initialiser of an integer variable")
    return np.array(number, dtype).tobytes()


def _scope_end(tokens: list[_Token], position: int, line: int) -> int:
    depth = 1
    while position < len(tokens):
        kind = tokens[position].kind
        if kind == "open":
            depth += 1
        elif kind == "close":
            depth -= 1
            if depth == 0:
                return position
        position += 1
    raise PtxSyntaxError(f"line {line}: a body without its closing brace")


def _build_entry(
    name: str,
    params: list[Param],
    body: list[_Token],
    module_shared: list[tuple[str, int, int]],
    dynamic_shared: str | None,
) -> Entry:
    builder = _EntryBuilder(name, params, module_shared, dynamic_shared)
    for token in body:
        if token.kind == "open":
            builder.scopes.append({})
        elif token.kind == "close":
            builder.scopes.pop()
        elif token.kind == "label":
            builder.entry.statements.append(token.text)
        elif token.kind == "header":
            raise PtxSyntaxError(f"line {token.line}: a function inside a function")
        else:
            text = token.text
            first = text.split(None, 1)[0]
            if first == ".reg":
                builder.declare_registers(text, token.line)
            elif first in (".shared", ".local"):
                builder.declare_variable(text, token.line)
            elif first in (".pragma", ".loc", ".maxntid", ".reqntid", ".minnctapersm"):
                continue
            elif first.startswith("."):
                raise PtxUnsupportedError(f"line {token.line}: the directive `{text}`")
            else:
                builder.instruction(text, token.line)
    return builder.entry
