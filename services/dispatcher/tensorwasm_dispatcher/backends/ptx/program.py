"""An entry translated once into basic blocks of NumPy operations, and the scheduler that
runs a group of thread blocks through them.

Scheduling is by the smallest program counter: each step runs the lowest-numbered basic
block that some live thread is at, for exactly the threads at it. Threads that branched
ahead wait there until the others catch up, so divergent paths reconverge at their join
point, and a `bar.sync` (which always starts a basic block) runs only once every thread
that will reach it has: the barrier is the scheduling itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tensorwasm_dispatcher.backends.ptx.arithmetic import translate_arithmetic
from tensorwasm_dispatcher.backends.ptx.common import Op
from tensorwasm_dispatcher.backends.ptx.memory_ops import (
    register_reads,
    translate_activemask,
    translate_atomic,
    translate_block_reduction,
    translate_load,
    translate_shuffle,
    translate_store,
    translate_vote,
    translate_warp_reduction,
)
from tensorwasm_dispatcher.backends.ptx.moves import translate_move
from tensorwasm_dispatcher.backends.ptx.operands import Operands
from tensorwasm_dispatcher.backends.ptx.parser import (
    Entry,
    Instruction,
    PtxSyntaxError,
    PtxUnsupportedError,
)
from tensorwasm_dispatcher.backends.ptx.state import Fault, GroupState, Mask, TrapError

_NO_OPS = {"membar", "fence", "nanosleep", "pmevent", "prefetch", "prefetchu", "bar.warp"}


class DeadlineError(Exception):
    """The launch ran past its deadline and was stopped."""


@dataclass
class Block:
    """A basic block: its ops, and where its threads go next."""

    ops: list[tuple[Op, Instruction]]
    branch_target: int | None = None  # a taken `bra`
    branch_guard: Instruction | None = None  # the guarded terminator, if any
    exits: bool = False  # ends in ret/exit (possibly guarded)


@dataclass
class Program:
    """A translated entry."""

    entry: Entry
    blocks: list[Block]
    instructions: list[Instruction]
    specials_used: set[str]
    writes_global: bool
    dynamic_shared_offset: int


def _guarded(op: Op, instruction: Instruction) -> Op:
    register = instruction.guard_register
    if register is None:
        return op
    slot, negated = register.slot, instruction.guard_negated

    def run(state: GroupState, mask: Mask) -> None:
        predicate = state.r[slot]
        if negated:
            predicate = np.logical_not(predicate)
        if np.ndim(predicate) == 0:
            if bool(predicate):
                op(state, mask)
            return
        combined = predicate if mask is None else (predicate & mask)
        if not combined.any():
            return
        op(state, None if mask is None and combined.all() else combined)

    return run


def _is_terminator(opcode: str) -> bool:
    name = opcode.split(".", maxsplit=1)[0]
    return name in ("bra", "ret", "exit", "trap", "brkpt")


def translate(entry: Entry) -> Program:  # noqa: PLR0912 - one branch per instruction form
    """Translates `entry` into basic blocks.

    Raises:
        PtxSyntaxError: an unknown label, malformed operands.
        PtxUnsupportedError: an instruction the executor does not run, named.
    """
    operands = Operands(entry)
    instructions = [s for s in entry.statements if isinstance(s, Instruction)]
    reads: set[str] = set()
    for instruction in instructions:
        reads |= register_reads(instruction)
    labels: dict[str, int] = {}
    seen = 0
    for statement in entry.statements:
        if isinstance(statement, str):
            if statement in labels:
                raise PtxSyntaxError(f"the label {statement!r} is defined twice")
            labels[statement] = seen
        else:
            seen += 1
    leaders = {0} | set(labels.values())
    for instruction in instructions:
        name = instruction.opcode.split(".")[0]
        if _is_terminator(instruction.opcode):
            leaders.add(instruction.index + 1)
        if name in ("bar", "barrier") and "warp" not in instruction.opcode:
            leaders.add(instruction.index)
            leaders.add(instruction.index + 1)
    starts = sorted(index for index in leaders if index <= len(instructions))
    block_at = {start: number for number, start in enumerate(starts)}
    blocks: list[Block] = []
    writes_global = False
    for number, start in enumerate(starts):
        end = starts[number + 1] if number + 1 < len(starts) else len(instructions)
        block = Block([])
        for instruction in instructions[start:end]:
            name = instruction.opcode.split(".")[0]
            if name in ("st", "atom", "red"):
                parts = instruction.opcode.split(".")
                writes_global |= "shared" not in parts and "local" not in parts
            if name == "bra":
                target = instruction.operands[0] if instruction.operands else ""
                if target not in labels:
                    raise PtxSyntaxError(f"line {instruction.line}: unknown label {target!r}")
                block.branch_target = block_at[labels[target]]
                block.branch_guard = instruction if instruction.guard_register else None
                continue
            if name in ("ret", "exit"):
                block.exits = True
                block.branch_guard = instruction if instruction.guard_register else None
                continue
            block.ops.append(
                (_guarded(_translate_one(instruction, operands, reads), instruction), instruction)
            )
        if not block.exits and block.branch_target is None and end == len(instructions):
            block.exits = True  # running off the end of the body returns
        blocks.append(block)
    return Program(
        entry,
        blocks,
        instructions,
        operands.specials_used,
        writes_global,
        operands.dynamic_shared_offset,
    )


def _translate_one(  # noqa: PLR0911, PLR0912 - one branch per instruction family
    instruction: Instruction, operands: Operands, reads: set[str]
) -> Op:
    parts = instruction.opcode.split(".")
    name = parts[0]
    if name in ("bar", "barrier") and "red" in parts:
        return translate_block_reduction(instruction, operands, parts)
    if name == "redux":
        return translate_warp_reduction(instruction, operands, parts)
    if name in ("bar", "barrier"):
        if "warp" in parts or parts[1:2] in (["sync"], ["cta"], []) or "sync" in parts:
            if "red" in parts or "arrive" in parts:
                raise PtxUnsupportedError(f"line {instruction.line}: `{instruction.text}`")
            return lambda state, mask: None
        raise PtxUnsupportedError(f"line {instruction.line}: `{instruction.text}`")
    if name in _NO_OPS or ".".join(parts[:2]) in _NO_OPS:
        return lambda state, mask: None
    if name in ("trap", "brkpt"):

        def trap(state: GroupState, mask: Mask) -> None:
            raise TrapError(instruction.text)

        return trap
    if name in {"ld", "ldu"}:
        return translate_load(instruction, operands, parts)
    if name == "st":
        return translate_store(instruction, operands, parts)
    if name in ("atom", "red"):
        reads_result = bool(instruction.operands) and instruction.operands[0] in reads
        return translate_atomic(instruction, operands, parts, reads_result)
    if name == "shfl":
        return translate_shuffle(instruction, operands, parts)
    if name == "vote":
        return translate_vote(instruction, operands, parts)
    if name == "activemask":
        return translate_activemask(instruction, operands)
    op = translate_move(instruction, operands) or translate_arithmetic(instruction, operands)
    if op is None:
        raise PtxUnsupportedError(f"line {instruction.line}: the instruction `{instruction.text}`")
    return op


def run_group(program: Program, state: GroupState, deadline: float) -> None:  # noqa: PLR0912, PLR0915 - one branch per instruction form
    """Runs every thread of `state` to its end (or raises a fault, trap or deadline)."""
    blocks = program.blocks
    finished = len(blocks)
    counters: npt.NDArray[np.int32] | None = None  # per thread, once they diverge
    uniform = 0  # the block every thread is at, while they agree
    while True:
        if counters is None:
            current, mask = uniform, None
        else:
            current = int(counters.min())
            if current == finished:
                return
            at_current = counters == current
            mask = None if at_current.all() else at_current
        if time.monotonic() > deadline:
            raise DeadlineError
        block = blocks[current]
        for op, instruction in block.ops:
            try:
                op(state, mask)
            except Fault as fault:
                fault.instruction = instruction
                raise
        state.steps += 1
        # Where the threads at this block go next.
        if block.branch_guard is not None:
            register = block.branch_guard.guard_register
            assert register is not None
            taken = state.r[register.slot]
            if block.branch_guard.guard_negated:
                taken = np.logical_not(taken)
        else:
            taken = np.True_ if (block.exits or block.branch_target is not None) else np.False_
        target = (
            finished
            if block.exits
            else (block.branch_target if block.branch_target is not None else current + 1)
        )
        following = current + 1
        if np.ndim(taken) == 0 or (mask is None and (taken.all() or not taken.any())):
            go = target if bool(np.all(taken)) else following
            if counters is None:
                if go == finished:
                    return
                uniform = go
            elif mask is None:
                counters.fill(go)
            else:
                counters[mask] = go
        else:
            destination = np.where(taken, target, following).astype(np.int32)
            if counters is None:
                counters = destination
            else:
                counters = np.where(at_current, destination, counters).astype(np.int32)
        if counters is not None and mask is None and counters.min() == counters.max():
            only = int(counters[0])
            if only == finished:
                return
            counters, uniform = None, only
