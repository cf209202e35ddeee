"""Auto-offload declarations: the `tensorwasm.offload` custom section of a guest module.

The section's payload is UTF-8 JSON, an object mapping an export name to its op and the
names of the op's arguments in the export's parameter order::

    {"matmul_f32": {"op": "matmul", "args": ["a_ptr", "b_ptr", "c_ptr", "m", "n", "k"]}}

Known ops and their conventions (every argument an i32; the export returns nothing or an
i32, which is 0 when the op ran):

- `matmul`: `a_ptr`, `b_ptr`, `c_ptr`, `m`, `n`, `k` -- `C[m x n] = A[m x k] @ B[k x n]`,
  row-major f32 in linear memory, as `tensorwasm:gpu/host@0.1.0` `matmul` computes it.

The gateway checks the section at deploy (`parse_section`, then `check_signature` against
the compiled exports) and keeps the result in the function's config; the executor gets the
declarations with each call and checks them again.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from tensorwasm_common.errors import (
    OffloadDeclarationMalformedError,
    OffloadOpUnknownError,
    OffloadSignatureMismatchError,
)

SECTION_NAME = "tensorwasm.offload"
MAX_SECTION_BYTES = 64 * 1024
MAX_DECLARATIONS = 64
# op -> the names of its arguments (all i32), in its canonical order.
OPS: Mapping[str, tuple[str, ...]] = {
    "matmul": ("a_ptr", "b_ptr", "c_ptr", "m", "n", "k"),
}
_WASM_HEADER = b"\x00asm\x01\x00\x00\x00"


@dataclass(frozen=True)
class Declaration:
    """One offloaded export: its op and, per op argument, the export parameter index."""

    export_name: str
    op: str
    args: tuple[str, ...]

    def order(self) -> tuple[int, ...]:
        """For each of the op's canonical arguments, the index of the export's parameter."""
        return tuple(self.args.index(name) for name in OPS[self.op])


def _leb128(data: bytes, at: int) -> tuple[int, int]:
    """An unsigned LEB128 (u32) at `at`: (value, next offset)."""
    value = shift = 0
    while True:
        if at >= len(data) or shift > 28:
            raise ValueError("truncated or oversized LEB128")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def custom_sections(wasm: bytes, name: str) -> Iterator[bytes]:
    """The payloads of the module's custom sections called `name`, in order.

    Raises:
        ValueError: the bytes are not a well-formed sequence of wasm sections.
    """
    if not wasm.startswith(_WASM_HEADER):
        raise ValueError("not a wasm module (version 1)")
    at = len(_WASM_HEADER)
    while at < len(wasm):
        section_id = wasm[at]
        size, start = _leb128(wasm, at + 1)
        end = start + size
        if end > len(wasm):
            raise ValueError("a section runs past the end of the module")
        if section_id == 0:
            name_len, name_at = _leb128(wasm, start)
            if name_at + name_len > end:
                raise ValueError("a custom section's name runs past its end")
            if wasm[name_at : name_at + name_len] == name.encode():
                yield wasm[name_at + name_len : end]
        at = end


def _malformed(why: str) -> OffloadDeclarationMalformedError:
    return OffloadDeclarationMalformedError(
        f"the {SECTION_NAME} custom section: {why}", metadata={"why": why[:200]}
    )


def parse_section(wasm: bytes) -> tuple[Declaration, ...]:
    """The module's offload declarations, checked for shape and known ops.

    Raises:
        OffloadDeclarationMalformedError: no section, more than one, or a payload that is
            not a JSON object of {"op": str, "args": [str, ...]} (at most 64 entries).
        OffloadOpUnknownError: an op other than OPS', or args that are not a permutation
            of the op's argument names.
    """
    try:
        payloads = list(custom_sections(wasm, SECTION_NAME))
    except ValueError as exc:
        raise _malformed(f"the module's sections cannot be read ({exc})") from None
    if len(payloads) != 1:
        raise _malformed("missing" if not payloads else f"present {len(payloads)} times")
    payload = payloads[0]
    if len(payload) > MAX_SECTION_BYTES:
        raise _malformed(f"{len(payload)} bytes (at most {MAX_SECTION_BYTES})")
    try:
        document = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _malformed(f"not UTF-8 JSON ({exc})") from None
    if not isinstance(document, dict) or not document:
        raise _malformed("not a non-empty JSON object")
    if len(document) > MAX_DECLARATIONS:
        raise _malformed(f"{len(document)} exports (at most {MAX_DECLARATIONS})")
    return tuple(declaration(name, entry) for name, entry in document.items())


def declaration(export_name: str, entry: object) -> Declaration:
    """One checked entry (also used by the executor on the declarations it receives).

    Raises:
        OffloadDeclarationMalformedError, OffloadOpUnknownError: as for `parse_section`.
    """
    if not export_name:
        raise _malformed("an empty export name")
    if not isinstance(entry, dict) or set(entry) != {"op", "args"}:
        raise _malformed(f"{export_name!r}: not an object with exactly `op` and `args`")
    op, args = entry["op"], entry["args"]
    if not isinstance(op, str) or not isinstance(args, list):
        raise _malformed(f"{export_name!r}: `op` must be a string and `args` a list")
    if not all(isinstance(arg, str) for arg in args):
        raise _malformed(f"{export_name!r}: `args` must be strings")
    expected = OPS.get(op)
    metadata = {"export": export_name[:200], "op": op[:64]}
    if expected is None:
        raise OffloadOpUnknownError(
            f"export {export_name!r}: op {op!r} cannot be offloaded (known: {sorted(OPS)})",
            metadata=metadata,
        )
    if sorted(args) != sorted(expected):
        raise OffloadOpUnknownError(
            f"export {export_name!r}: op {op!r} takes the arguments {list(expected)} "
            f"(in any order), not {args}",
            metadata=metadata,
        )
    return Declaration(export_name, op, tuple(args))


def check_signature(
    item: Declaration, exports: Mapping[str, tuple[Sequence[str], Sequence[str]]]
) -> None:
    """Checks a declaration against the module's exports ({name: (params, results)}, type
    names "i32", "i64", ...).

    Raises:
        OffloadSignatureMismatchError: the export is missing, or its parameters are not one
            i32 per op argument, or it returns something other than nothing or one i32.
    """
    expected = f"({', '.join(['i32'] * len(item.args))}) -> () or -> i32"
    signature = exports.get(item.export_name)
    metadata = {"export": item.export_name[:200], "expected": expected}
    if signature is None:
        raise OffloadSignatureMismatchError(
            f"the offloaded export {item.export_name!r} is not an exported function",
            metadata=metadata,
        )
    params, results = (list(types) for types in signature)
    if params != ["i32"] * len(item.args) or results not in ([], ["i32"]):
        raise OffloadSignatureMismatchError(
            f"export {item.export_name!r} is ({', '.join(params)}) -> "
            f"({', '.join(results)}); op {item.op!r} needs {expected}",
            metadata=metadata,
        )
