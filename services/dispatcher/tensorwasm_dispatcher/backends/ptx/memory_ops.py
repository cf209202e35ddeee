"""Translation of loads, stores, atomics and warp-level instructions (shuffles, votes).

Loads and stores touch only the active threads' addresses, each checked against its state
space (a fault names the thread and the address). Atomics serialise conflicting threads
in thread order, so each one sees the value left by the previous; reductions whose old
value nobody reads use NumPy's unbuffered `ufunc.at`, which does the same in one pass.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from tensorwasm_dispatcher.backends.ptx.common import Op, unsupported
from tensorwasm_dispatcher.backends.ptx.operands import Operands, parse_type
from tensorwasm_dispatcher.backends.ptx.parser import Instruction, PtxSyntaxError
from tensorwasm_dispatcher.backends.ptx.state import (
    SHARED_WINDOW,
    Affine,
    GroupState,
    Mask,
    Piece,
    Value,
    dense,
)

_SPACES = {"global", "shared", "local", "param", "const"}
_QUALIFIERS = {
    "weak", "volatile", "relaxed", "acquire", "release", "acq_rel", "sc", "cta", "gpu", "sys",
    "ca", "cg", "cs", "lu", "cv", "wb", "wt", "nc", "cluster", "noftz", "aligned",
}  # fmt: skip


def _space_and_vector(instruction: Instruction, parts: list[str]) -> tuple[str, int]:
    space = "generic"
    vector = 1
    for part in parts[1:-1]:
        base = part.split("::", 1)[0]
        if base in _SPACES:
            space = base
        elif base in ("v2", "v4", "v8"):
            vector = int(base[1:])
        elif base in _QUALIFIERS or part.startswith(("L1::", "L2::")) or base in ("L1", "L2"):
            continue
        else:
            raise unsupported(instruction, f"the qualifier .{part}")
    if space == "const":  # module constants live in global memory here
        space = "global"
    return space, vector


def _lanes(state: GroupState, mask: Mask) -> npt.NDArray[np.int64] | None:
    """The active threads' indices (None: every thread)."""
    return None if mask is None else np.flatnonzero(mask)


def _addresses(
    state: GroupState, address: Value, lanes: npt.NDArray[np.int64] | None
) -> npt.NDArray[np.uint64]:
    full = state.full(address).astype(np.uint64, copy=False)
    return full if lanes is None else full[lanes]


def _contiguous(  # noqa: PLR0917 - the parts of one access
    state: GroupState,
    space: str,
    address: Affine,
    dtype: np.dtype[Any],
    vector: int,
    writing: bool,
) -> tuple[npt.NDArray[Any], int, int] | None:
    """A global access whose threads' addresses step evenly: a slice of one buffer."""
    step = address.contiguous_step
    if step is None or space not in ("global", "generic") or address.high >= SHARED_WINDOW:
        return None
    return state.memory.contiguous(address.start, step, state.threads, dtype, vector, writing)


def _gather(pieces: list[Piece], offset: int, count: int, dtype: np.dtype[Any]) -> Value:
    if len(pieces) == 1 and pieces[0][2] is None:
        view, index, _ = pieces[0]
        return view[index + offset] if offset else view[index]
    values = np.empty(count, dtype)
    for view, index, selection in pieces:
        values[selection] = view[index + offset]
    return values


def _scatter(pieces: list[Piece], offset: int, values: Value) -> None:
    for view, index, selection in pieces:
        where = index + offset if offset else index
        view[where] = values if selection is None else values[selection]


def _vector_registers(text: str) -> list[str]:
    return [p.strip() for p in text.strip("{}").split(",")] if text.startswith("{") else [text]


def translate_load(instruction: Instruction, ops: Operands, parts: list[str]) -> Op:
    dtype = parse_type(instruction, parts[-1])
    space, vector = _space_and_vector(instruction, parts)
    if len(instruction.operands) != 2:
        raise PtxSyntaxError(f"line {instruction.line}: `{instruction.text}` takes 2 operands")
    targets = _vector_registers(instruction.operands[0])
    if len(targets) != vector:
        raise PtxSyntaxError(f"line {instruction.line}: {vector} registers expected")
    writers = [ops.writer(instruction, target) for target in targets]
    address, symbol_space = ops.address(instruction, instruction.operands[1])
    if space == "param" or symbol_space == "param":
        return _load_param(instruction, ops, dtype, vector, writers, address)

    def load(state: GroupState, mask: Mask) -> None:
        where = address(state)
        if mask is None and isinstance(where, Affine):
            found = _contiguous(state, space, where, dtype, vector, writing=False)
            if found is not None:
                view, first, step = found
                stop = first + step * state.threads
                for position, write in enumerate(writers):
                    write(state, view[first + position : stop + position : step].copy(), None)
                return
        lanes = _lanes(state, mask)
        addresses = _addresses(state, where, lanes)
        pieces = state.locate(space, addresses, lanes, dtype, vector)
        for position, write in enumerate(writers):
            values = _gather(pieces, position, addresses.size, dtype)
            if lanes is None:
                write(state, values, None)
            else:
                full = np.zeros(state.threads, dtype)
                full[lanes] = values
                write(state, full, mask)

    return load


def _load_param(  # noqa: PLR0917 - one branch per instruction form
    instruction: Instruction,
    ops: Operands,
    dtype: np.dtype[Any],
    vector: int,
    writers: list[Callable[[GroupState, Value, Mask], None]],
    address: Callable[[GroupState], Value],
) -> Op:
    width = dtype.itemsize
    code = {1: "B", 2: "H", 4: "I", 8: "Q"}[width]

    def load(state: GroupState, mask: Mask) -> None:
        offset = int(np.asarray(address(state)).flat[0])
        if offset + width * vector > len(state.params):
            raise PtxSyntaxError(f"line {instruction.line}: a read past the parameters")
        for position, write in enumerate(writers):
            (bits,) = struct.unpack_from(f"<{code}", state.params, offset + position * width)
            value = np.array(bits, np.dtype(f"u{width}")).view(dtype)[()]
            write(state, value, mask)

    return load


def translate_store(instruction: Instruction, ops: Operands, parts: list[str]) -> Op:
    dtype = parse_type(instruction, parts[-1])
    space, vector = _space_and_vector(instruction, parts)
    if space == "param":
        raise unsupported(instruction, "stores to parameters")
    if len(instruction.operands) != 2:
        raise PtxSyntaxError(f"line {instruction.line}: `{instruction.text}` takes 2 operands")
    address, _ = ops.address(instruction, instruction.operands[0])
    sources = _vector_registers(instruction.operands[1])
    if len(sources) != vector:
        raise PtxSyntaxError(f"line {instruction.line}: {vector} registers expected")
    readers = [ops.reader(instruction, source, dtype) for source in sources]

    def store(state: GroupState, mask: Mask) -> None:
        where = address(state)
        if mask is None and isinstance(where, Affine):
            found = _contiguous(state, space, where, dtype, vector, writing=True)
            if found is not None:
                view, first, step = found
                stop = first + step * state.threads
                for position, read in enumerate(readers):
                    view[first + position : stop + position : step] = dense(read(state))
                return
        lanes = _lanes(state, mask)
        addresses = _addresses(state, where, lanes)
        pieces = state.locate(space, addresses, lanes, dtype, vector, writing=True)
        for position, read in enumerate(readers):
            values = state.full(read(state))
            _scatter(pieces, position, values if lanes is None else values[lanes])

    return store


def _atomic_function(  # noqa: PLR0911 - one branch per instruction form
    instruction: Instruction, op: str, dtype: np.dtype[Any]
) -> Callable[..., Value]:
    if op == "add":
        return np.add
    if op in ("min", "max"):
        if dtype.kind == "f":
            return np.fmin if op == "min" else np.fmax
        return np.minimum if op == "min" else np.maximum
    if op in ("and", "or", "xor"):
        return {"and": np.bitwise_and, "or": np.bitwise_or, "xor": np.bitwise_xor}[op]
    if op == "exch":
        return lambda old, b: b
    if op == "inc":
        return lambda old, b: np.where(old >= b, dtype.type(0), old + dtype.type(1))
    if op == "dec":
        return lambda old, b: np.where((old == 0) | (old > b), b, old - dtype.type(1))
    if op == "cas":
        return lambda old, b, c: np.where(old == b, c, old)
    raise unsupported(instruction, f"atomic .{op}")


_UFUNC_AT = {"add", "min", "max", "and", "or", "xor"}


def translate_atomic(
    instruction: Instruction, ops: Operands, parts: list[str], reads_result: bool
) -> Op:
    is_red = parts[0] == "red"
    dtype = parse_type(instruction, parts[-1])
    op = parts[-2]
    space, vector = _space_and_vector(instruction, [parts[0], *parts[1:-2], parts[-1]])
    if vector != 1 or space in ("param", "local"):
        raise unsupported(instruction)
    if parts[-1] in ("f16", "f16x2", "bf16") or dtype.kind == "b":
        raise unsupported(instruction, "this atomic type")
    operands = instruction.operands
    write = None if is_red else ops.writer(instruction, operands[0])
    rest = operands if is_red else operands[1:]
    address, _ = ops.address(instruction, rest[0])
    values = [ops.reader(instruction, text, dtype) for text in rest[1:]]
    function = _atomic_function(instruction, op, dtype)
    if len(values) != (2 if op == "cas" else 1):
        raise PtxSyntaxError(f"line {instruction.line}: wrong operands for `{instruction.text}`")
    needs_old = write is not None and reads_result
    ufunc = function if op in _UFUNC_AT and not needs_old else None

    def atomic(state: GroupState, mask: Mask) -> None:
        lanes = _lanes(state, mask)
        addresses = _addresses(state, address(state), lanes)
        pieces = state.locate(space, addresses, lanes, dtype, writing=True)
        operands_now = [state.full(read(state)) for read in values]
        if lanes is not None:
            operands_now = [operand[lanes] for operand in operands_now]
        old = np.empty(addresses.size, dtype)
        for view, index, selection in pieces:
            mine = operands_now if selection is None else [o[selection] for o in operands_now]
            previous = _apply_atomic(view, index, mine, function, ufunc, op, dtype)
            if selection is None:
                old = previous
            else:
                old[selection] = previous
        if write is not None:
            if lanes is None:
                write(state, old, None)
            else:
                full = np.zeros(state.threads, dtype)
                full[lanes] = old
                write(state, full, mask)

    return atomic


def _apply_atomic(  # noqa: PLR0917 - one atomic's parts
    view: npt.NDArray[Any],
    index: npt.NDArray[np.int64],
    operands: list[Value],
    function: Callable[..., Value],
    ufunc: Any,
    op: str,
    dtype: np.dtype[Any],
) -> Value:
    """Applies one atomic per thread, in thread order; returns the values each one saw."""
    if ufunc is not None:  # nobody reads the old values
        ufunc.at(view, index, operands[0])
        return np.zeros(index.size, dtype)
    if op == "add" and dtype.kind in "iu":
        # Integer adds commute exactly: each thread sees the sum of those before it.
        order = np.argsort(index, kind="stable")
        sorted_index = index[order]
        addends = operands[0][order].astype(dtype)
        running = np.cumsum(addends, dtype=dtype)
        starts = np.flatnonzero(np.r_[True, sorted_index[1:] != sorted_index[:-1]])
        before = running - addends
        before = before - np.repeat(before[starts], np.diff(np.r_[starts, sorted_index.size]))
        old_sorted = view[sorted_index] + before
        old = np.empty(index.size, dtype)
        old[order] = old_sorted
        ends = np.r_[starts[1:], sorted_index.size] - 1
        view[sorted_index[ends]] = old_sorted[ends] + addends[ends]
        return old
    old = np.empty(index.size, dtype)
    remaining = np.arange(index.size)
    while remaining.size:
        # The first thread (in thread order) at each address goes in this round.
        _, first = np.unique(index[remaining], return_index=True)
        chosen = remaining[first]
        where = index[chosen]
        previous = view[where]
        old[chosen] = previous
        view[where] = function(previous, *(operand[chosen] for operand in operands))
        remaining = np.delete(remaining, first)
    return old


def translate_shuffle(instruction: Instruction, ops: Operands, parts: list[str]) -> Op:
    mode = next((p for p in parts if p in ("up", "down", "bfly", "idx")), None)
    if mode is None or parts[-1] != "b32":
        raise unsupported(instruction)
    operands = instruction.operands
    if len(operands) not in (4, 5):
        raise PtxSyntaxError(f"line {instruction.line}: `{instruction.text}`: wrong operands")
    targets = operands[0].split("|")
    write = ops.writer(instruction, targets[0])
    write_valid = ops.writer(instruction, targets[1]) if len(targets) > 1 else None
    u32 = np.dtype(np.uint32)
    source = ops.reader(instruction, operands[1], u32)
    b = ops.reader(instruction, operands[2], u32)
    c = ops.reader(instruction, operands[3], u32)

    def shuffle(state: GroupState, mask: Mask) -> None:
        lane = state.specials["%laneid"].astype(np.int64)
        bval = state.full(b(state)).astype(np.int64) & 31
        cval = state.full(c(state)).astype(np.int64)
        segment = (cval >> 8) & 31
        clamp = cval & 31
        max_lane = (lane & segment) | (clamp & ~segment)
        min_lane = lane & segment
        if mode == "up":
            j = lane - bval
            valid = j >= max_lane
        elif mode == "down":
            j = lane + bval
            valid = j <= max_lane
        elif mode == "bfly":
            j = lane ^ bval
            valid = j <= max_lane
        else:
            j = min_lane | (bval & ~segment)
            valid = j <= max_lane
        j = np.where(valid, j, lane)
        partner = state.lane_index - lane + j
        in_block = (partner // state.block_threads) == state.block_of_lane
        partner = np.where(in_block & (partner < state.threads), partner, state.lane_index)
        values = state.full(source(state))
        write(state, values[partner], mask)
        if write_valid is not None:
            write_valid(state, valid, mask)

    return shuffle


def _warp_keys(state: GroupState) -> npt.NDArray[np.int64]:
    warps_per_block = -(-state.block_threads // 32)
    local = state.lane_index % state.block_threads
    return state.block_of_lane * warps_per_block + local // 32


def translate_vote(instruction: Instruction, ops: Operands, parts: list[str]) -> Op:
    mode = next((p for p in parts if p in ("all", "any", "uni", "ballot")), None)
    if mode is None:
        raise unsupported(instruction)
    write = ops.writer(instruction, instruction.operands[0])
    predicate = ops.reader(instruction, instruction.operands[1], np.dtype(np.bool_))

    def vote(state: GroupState, mask: Mask) -> None:
        keys = _warp_keys(state)
        active = np.ones(state.threads, np.bool_) if mask is None else mask
        truth = state.full(predicate(state)) & active
        count = int(keys.max()) + 1
        if mode == "ballot":
            bits = truth * (np.uint64(1) << (state.specials["%laneid"].astype(np.uint64)))
            sums = np.bincount(keys, weights=bits.astype(np.float64), minlength=count)
            write(state, sums.astype(np.uint64).astype(np.uint32)[keys], mask)
            return
        trues = np.bincount(keys, weights=truth, minlength=count)[keys]
        actives = np.bincount(keys, weights=active, minlength=count)[keys]
        if mode == "all":
            result = trues == actives
        elif mode == "any":
            result = trues > 0
        else:
            result = (trues == actives) | (trues == 0)
        write(state, result, mask)

    return vote


def translate_activemask(instruction: Instruction, ops: Operands) -> Op:
    write = ops.writer(instruction, instruction.operands[0])

    def activemask(state: GroupState, mask: Mask) -> None:
        keys = _warp_keys(state)
        active = np.ones(state.threads, np.bool_) if mask is None else mask
        bits = active * (np.uint64(1) << state.specials["%laneid"].astype(np.uint64))
        sums = np.bincount(keys, weights=bits.astype(np.float64), minlength=int(keys.max()) + 1)
        write(state, sums.astype(np.uint64).astype(np.uint32)[keys], mask)

    return activemask


def register_reads(instruction: Instruction) -> set[str]:
    """Register names this instruction reads (to find atomics whose old value is unused)."""
    first = instruction.opcode.split(".")[0]
    operands = instruction.operands
    sources = operands if first in ("st", "red") else operands[1:]
    names: set[str] = set()
    for text in sources:
        names.update(re.findall(r"%?[A-Za-z_$][\w$]*", text))
    if operands and first not in ("st", "red"):
        # A destination's address (`[%rd]` of an atom) is read too.
        names.update(
            re.findall(r"%?[A-Za-z_$][\w$]*", operands[0]) if operands[0].startswith("[") else []
        )
    if instruction.guard_register is not None:
        names.add(instruction.guard_register.name)
    return names


def translate_block_reduction(instruction: Instruction, ops: Operands, parts: list[str]) -> Op:
    """`bar.red.{popc,and,or}`: a barrier (the scheduler's) that also counts or combines a
    predicate over the block's threads."""
    mode = parts[2] if len(parts) > 2 else ""
    if mode not in ("popc", "and", "or") or len(instruction.operands) not in (3, 4):
        raise unsupported(instruction)
    write = ops.writer(instruction, instruction.operands[0])
    predicate = ops.reader(instruction, instruction.operands[-1], np.dtype(np.bool_))

    def reduce(state: GroupState, mask: Mask) -> None:
        keys = state.block_of_lane
        active = np.ones(state.threads, np.bool_) if mask is None else mask
        truth = state.full(predicate(state)) & active
        blocks = state.threads // state.block_threads
        trues = np.bincount(keys, weights=truth, minlength=blocks)[keys]
        if mode == "popc":
            write(state, trues.astype(np.uint32), mask)
        elif mode == "and":
            actives = np.bincount(keys, weights=active, minlength=blocks)[keys]
            write(state, trues == actives, mask)
        else:
            write(state, trues > 0, mask)

    return reduce


_REDUX_IDENTITY = {"min": "max", "max": "min"}


def translate_warp_reduction(instruction: Instruction, ops: Operands, parts: list[str]) -> Op:
    """`redux.sync.{add,min,max,and,or,xor}`: one value per warp from its active threads."""
    if len(parts) < 4 or parts[2] not in ("add", "min", "max", "and", "or", "xor"):
        raise unsupported(instruction)
    op = parts[2]
    dtype = parse_type(instruction, parts[-1])
    if dtype.itemsize != 4 or dtype.kind not in "iu":
        raise unsupported(instruction)
    write = ops.writer(instruction, instruction.operands[0])
    source = ops.reader(instruction, instruction.operands[1], dtype)
    ufunc = {"min": np.minimum, "max": np.maximum, "and": np.bitwise_and,
             "or": np.bitwise_or, "xor": np.bitwise_xor}.get(op)  # fmt: skip

    def reduce(state: GroupState, mask: Mask) -> None:
        keys = _warp_keys(state)
        values = state.full(source(state))
        count = int(keys.max()) + 1
        lanes = slice(None) if mask is None else mask
        if op == "add":
            wide = values.astype(np.int64)[lanes] % (1 << 32)
            sums = np.bincount(keys[lanes], weights=wide.astype(np.float64), minlength=count)
            result = (sums.astype(np.int64) % (1 << 32)).astype(np.uint32).view(dtype)
        else:
            assert ufunc is not None
            if op in _REDUX_IDENTITY:
                start = getattr(np.iinfo(dtype), _REDUX_IDENTITY[op])
            else:
                start = ~dtype.type(0) if op == "and" else dtype.type(0)
            result = np.full(count, start, dtype)
            ufunc.at(result, keys[lanes], values[lanes])
        write(state, result[keys], mask)

    return reduce
