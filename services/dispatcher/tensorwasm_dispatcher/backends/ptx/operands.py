"""Operands of translated instructions: readers of registers, immediates, special registers
and symbols at the instruction's type, writers into registers under an active mask, and
addresses (`[base+offset]`).

Values change type by reinterpreting bits (a `.b32` register read as `.f32`), or, where
the widths differ, by PTX's truncation and extension rules.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from tensorwasm_dispatcher.backends.ptx.parser import (
    TYPES,
    Entry,
    Instruction,
    PtxSyntaxError,
    PtxUnsupportedError,
    Register,
)
from tensorwasm_dispatcher.backends.ptx.state import (
    MODULE_BASE,
    Affine,
    GroupState,
    Mask,
    Value,
    dense,
)

Reader = Callable[[GroupState], Value]
Writer = Callable[[GroupState, Value, Mask], None]

SPECIALS = {
    f"%{name}.{axis}" for name in ("tid", "ntid", "ctaid", "nctaid") for axis in "xyz"
} | {
    "%laneid", "%warpid", "%nwarpid", "%smid", "%nsmid", "%gridid", "%clock", "%clock64",
    "%globaltimer", "%lanemask_eq", "%lanemask_lt", "%lanemask_le", "%lanemask_gt",
    "%lanemask_ge",
}  # fmt: skip
_INT = re.compile(r"^-?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9]\d*)U?$")


def fit(value: Value, dtype: np.dtype[Any]) -> Value:
    """`value` held as `dtype`: the same bits when the widths agree, else truncated or
    extended (by the signedness of `value`'s own type) as PTX does."""
    source = value.dtype
    if source == dtype:
        return value
    if source.itemsize == dtype.itemsize and source.kind != "b" and dtype.kind != "b":
        return value.view(dtype)
    if source.kind == "b" or dtype.kind == "b":
        return value.astype(dtype)
    if source.kind == "f":
        value = value.view(np.dtype(f"u{source.itemsize}"))
        source = value.dtype
    kind = "i" if source.kind == "i" else "u"
    widened = value.astype(np.dtype(f"{kind}{dtype.itemsize}"))
    return widened if widened.dtype == dtype else widened.view(dtype)


def immediate(text: str, dtype: np.dtype[Any]) -> Value | None:  # noqa: PLR0911 - one branch per instruction form
    """An immediate operand as a scalar of `dtype`, or None if `text` is not one."""
    if text.startswith(("0f", "0F")) and len(text) == 10:
        bits = np.uint32(int(text[2:], 16))
        return (
            fit(bits.view(np.float32), dtype)
            if dtype.kind != "f"
            else _float(float(bits.view(np.float32)), dtype)
        )
    if text.startswith(("0d", "0D")) and len(text) == 18:
        (number,) = struct.unpack("<d", struct.pack("<Q", int(text[2:], 16)))
        return _float(number, dtype) if dtype.kind == "f" else fit(np.float64(number), dtype)
    if _INT.match(text):
        digits = text.rstrip("U")
        negative = digits.startswith("-")
        digits = digits.lstrip("-")
        if digits.lower().startswith("0x"):
            number = int(digits, 16)
        elif digits.startswith("0") and len(digits) > 1:
            number = int(digits, 8)
        else:
            number = int(digits)
        number = -number if negative else number
        if dtype.kind == "f":
            return _float(float(number), dtype)
        if dtype.kind == "b":
            return np.bool_(number != 0)
        masked = number & ((1 << (8 * dtype.itemsize)) - 1)
        return np.array(masked, dtype=np.dtype(f"u{dtype.itemsize}")).view(dtype)[()]
    if re.fullmatch(r"-?\d+\.\d*(e[-+]?\d+)?", text) and dtype.kind == "f":
        return _float(float(text), dtype)
    return None


def _float(number: float, dtype: np.dtype[Any]) -> Value:
    with np.errstate(over="ignore"):
        return np.array(number, dtype=dtype)[()]


class Operands:
    """Builds readers and writers for one entry's instructions."""

    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        self.specials_used: set[str] = set()
        self.dynamic_shared_offset = -(-entry.shared_static_bytes // 16) * 16

    def register(self, instruction: Instruction, name: str) -> Register:
        register = instruction.registers.get(name)
        if register is None:
            raise PtxSyntaxError(f"line {instruction.line}: undeclared register {name}")
        return register

    def symbol_address(self, instruction: Instruction, name: str) -> tuple[str, int] | None:
        """(state space, address) of a variable or parameter, or None."""
        variable = self.entry.variables.get(name)
        if variable is not None:
            return variable.space, variable.offset_bytes
        if name in self.entry.module_variables:
            return "global", MODULE_BASE + self.entry.module_variables[name]
        if name == self.entry.dynamic_shared:
            return "shared", self.dynamic_shared_offset
        for param in self.entry.params:
            if param.name == name:
                return "param", param.offset_bytes
        return None

    def reader(
        self, instruction: Instruction, text: str, dtype: np.dtype[Any], affine: bool = False
    ) -> Reader:
        """A reader of `text` (register, `!pred`, special, immediate, symbol) as `dtype`.

        With `affine`, an affine value comes back as one (cast to `dtype`) where it fits;
        otherwise every value is a NumPy array or scalar.
        """
        if text.startswith("!"):
            inner = self.reader(instruction, text[1:], np.dtype(np.bool_))
            return lambda state: np.logical_not(inner(state))
        if text in SPECIALS:
            self.specials_used.add(text)
            return lambda state: _held(state.specials[text], dtype, affine)
        if text.startswith("%") or text in instruction.registers:
            if text.startswith(("%envreg", "%pm", "%total")):
                raise PtxUnsupportedError(f"line {instruction.line}: the register {text}")
            slot = self.register(instruction, text).slot
            return lambda state: _held(state.r[slot], dtype, affine)
        constant = immediate(text, dtype)
        if constant is not None:
            return lambda state: constant
        symbol = self.symbol_address(instruction, text)
        if symbol is not None:
            space, address = symbol
            if space == "param":
                raise PtxUnsupportedError(f"line {instruction.line}: the address of a parameter")
            value = fit(np.uint64(address), dtype)
            return lambda state: value
        if re.fullmatch(r"[A-Za-z_$][\w$]*", text):
            raise PtxUnsupportedError(
                f"line {instruction.line}: `{text}` (module variables and functions)"
            )
        raise PtxSyntaxError(f"line {instruction.line}: cannot read the operand `{text}`")

    def writer(self, instruction: Instruction, text: str) -> Writer:
        """A writer into register `text` (`_` discards): the active threads only."""
        if text == "_":
            return lambda state, value, mask: None
        if not (text.startswith("%") or text in instruction.registers) or text in SPECIALS:
            raise PtxSyntaxError(f"line {instruction.line}: cannot write to `{text}`")
        register = self.register(instruction, text)
        slot, dtype = register.slot, register.dtype

        def write(state: GroupState, value: Value, mask: Mask) -> None:
            if isinstance(value, Affine):
                held = value.cast(dtype) if mask is None else None
                if held is not None:
                    state.r[slot] = held
                    return
                value = value.dense()
            value = fit(value, dtype)
            if mask is None:
                state.r[slot] = value
            else:
                state.r[slot] = np.where(mask, value, dense(state.r[slot]))

        return write

    def address(self, instruction: Instruction, text: str) -> tuple[Reader, str | None]:
        """A reader of the u64 address `[base+offset]`, and the space its symbol names."""
        match = re.fullmatch(r"\[\s*([^\]+\-]+?)\s*(?:\+\s*(-?\w+))?\s*\]", text) or re.fullmatch(
            r"\[\s*([^\]+\-]+?)\s*(-\w+)\s*\]", text
        )
        if match is None:
            raise PtxSyntaxError(f"line {instruction.line}: `{text}` is not an address")
        base_text, offset_text = match.group(1), match.group(2)
        offset = 0
        if offset_text:
            value = immediate(offset_text, np.dtype(np.int64))
            if value is None:
                raise PtxSyntaxError(f"line {instruction.line}: bad offset in `{text}`")
            offset = int(value)
        symbol = self.symbol_address(instruction, base_text)
        if symbol is not None:
            space, base = symbol
            constant = np.uint64((base + offset) & (2**64 - 1))
            return (lambda state: constant), space
        if not base_text.startswith("%"):
            value = immediate(base_text, np.dtype(np.uint64))
            if value is None:
                raise PtxUnsupportedError(
                    f"line {instruction.line}: `{base_text}` (module variables and functions)"
                )
            constant = np.uint64((int(value) + offset) & (2**64 - 1))
            return (lambda state: constant), None
        register = self.register(instruction, base_text)
        slot = register.slot
        delta = np.uint64(offset & (2**64 - 1))
        wide = register.dtype.itemsize == 8

        def read(state: GroupState) -> Value:
            raw = state.r[slot]
            if isinstance(raw, Affine):
                held = raw.cast(np.dtype(np.uint64)) if wide else raw.cast(np.dtype(np.uint32))
                if held is not None:
                    return _offset_affine(held, offset) if offset else held.cast(
                        np.dtype(np.uint64))  # fmt: skip
                raw = raw.dense()
            base = (
                fit(raw, np.dtype(np.uint64))
                if wide
                else fit(fit(raw, np.dtype(np.uint32)), np.dtype(np.uint64))
            )
            return base + delta if offset else base

        return read, None


def _held(value: Value, dtype: np.dtype[Any], affine: bool) -> Value:
    if isinstance(value, Affine):
        if affine:
            held = value.cast(dtype)
            if held is not None:
                return held
        return fit(value.dense(), dtype)
    return fit(value, dtype)


def _offset_affine(value: Affine, offset: int) -> Value:
    moved = Affine.make(value.start + offset, value.block_step, value.thread_step,
                        np.dtype(np.uint64), value.blocks, value.block_threads)  # fmt: skip
    return moved if moved is not None else value.dense().astype(np.uint64) + np.uint64(
        offset & (2**64 - 1))  # fmt: skip


def parse_type(instruction: Instruction, name: str) -> np.dtype[Any]:
    dtype = TYPES.get(name)
    if dtype is None:
        raise PtxUnsupportedError(
            f"line {instruction.line}: the type .{name} in `{instruction.text}`"
        )
    return dtype
