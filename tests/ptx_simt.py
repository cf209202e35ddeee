"""A small SIMT interpreter of the jit cache's emitted PTX, for tests.

Runs one `.entry` over a chosen set of blocks of a launch: each register is a NumPy array
over the threads. Warps (32 consecutive threads of a block) run one after another, each
until it ends or waits at `bar.sync` (released when every live thread of its block waits
there); inside a warp, threads diverge and reconverge by min-PC scheduling (the threads
at the lowest instruction index run it), so loops and forward exits behave as on a GPU
for the structured code the emitters write. Running warps in turn is one of the orders a
GPU may choose, and it makes a race visible: a warp that re-applies an in-place update
sees what an earlier warp stored. Global memory is a byte array holding the launch's
buffers with a guard between them; every access is checked to lie inside one buffer and
to be aligned. A kernel that runs more than `max_steps` instructions raises
`KernelDidNotFinishError` (a grid-stride loop whose stride wrapped to 0, say).

It knows only the instructions the emitters use; any other fails the test with its name,
so an emitter change that needs more has to teach it. The f32 arithmetic is NumPy's
(`ex2.approx` is exact here; the GPU's is within 2 ulps).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]
Dim3 = tuple[int, int, int]
GUARD_BYTES = 256  # bytes between buffers, so an address past a buffer is caught, not aliased

_INT_TYPES: dict[str, type[np.generic]] = {
    "u16": np.uint16, "b16": np.uint16, "s16": np.int16,
    "u32": np.uint32, "b32": np.uint32, "s32": np.int32,
    "u64": np.uint64, "b64": np.uint64, "s64": np.int64,
}  # fmt: skip
# The f32 arithmetic, by PTX opcode without its type suffix.
FLOAT_OPS: dict[str, Callable[..., Array]] = {
    "add.rn": np.add,
    "sub.rn": np.subtract,
    "mul.rn": np.multiply,
    "div.rn": np.divide,
    "max": np.fmax,  # PTX max/min return the other operand when one is NaN
    "min": np.fmin,
    "neg": np.negative,
    "abs": np.abs,
    "sqrt.rn": np.sqrt,
    "ex2.approx": np.exp2,
    # fma rounds once: the f32 product is exact in f64, the f64 sum is rounded to f32.
    "fma.rn": lambda a, b, c: (a.astype(np.float64) * b + c).astype(np.float32),
}
_INT_OPS: dict[str, Callable[[Array, Array], Array]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul.lo": np.multiply,
    "or": np.bitwise_or,
    "and": np.bitwise_and,
    "xor": np.bitwise_xor,
    "min": np.minimum,
    "max": np.maximum,
}
_COMPARE: dict[str, Callable[[Array, Array], Array]] = {
    "eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal,
    "gt": np.greater, "ge": np.greater_equal,
}  # fmt: skip


class KernelDidNotFinishError(AssertionError):
    """The kernel ran more instructions than the interpreter allows (it does not end)."""


@dataclass(frozen=True)
class Buffer:
    """A global buffer of the launch: its base address in the interpreter's memory."""

    base: int
    size_bytes: int


@dataclass
class Memory:
    """Global memory: buffers laid out with a guard before and after each."""

    data: npt.NDArray[np.uint8]
    buffers: list[Buffer]

    @classmethod
    def holding(cls, arrays: Iterable[Array]) -> Memory:
        """Memory with each array copied into its own buffer (guards filled with 0xFF)."""
        arrays = list(arrays)
        buffers, offset = [], GUARD_BYTES
        for array in arrays:
            buffers.append(Buffer(offset, array.nbytes))
            offset += -(-array.nbytes // GUARD_BYTES) * GUARD_BYTES + GUARD_BYTES
        data = np.full(offset, 0xFF, np.uint8)
        for buffer, array in zip(buffers, arrays, strict=True):
            data[buffer.base : buffer.base + buffer.size_bytes] = np.frombuffer(
                array.tobytes(), np.uint8
            )
        return cls(data, buffers)

    def array(self, index: int, dtype: npt.DTypeLike) -> Array:
        """A copy of buffer `index`'s bytes as `dtype`."""
        buffer = self.buffers[index]
        return self.data[buffer.base : buffer.base + buffer.size_bytes].view(dtype).copy()

    def check(self, addresses: npt.NDArray[np.uint64], width: int) -> None:
        inside = np.zeros(addresses.shape, np.bool_)
        for buffer in self.buffers:
            inside |= (addresses >= buffer.base) & (
                addresses + width <= buffer.base + buffer.size_bytes
            )
        assert inside.all(), f"an access outside every buffer: {addresses[~inside][:4]}"
        assert (addresses % width == 0).all(), "a misaligned global access"


@dataclass
class Kernel:
    """An entry's parameters (name, PTX type), shared arrays and statements."""

    params: list[tuple[str, str]]
    shared: dict[str, tuple[int, int]]  # name -> (offset, size in bytes)
    shared_bytes: int
    statements: list[str]
    labels: dict[str, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, ptx: str) -> Kernel:
        header, body = ptx.split(".visible .entry", 1)[1].split("{", 1)
        params = [(name, kind) for kind, name in re.findall(r"\.param\s+\.(\w+)\s+(\w+)", header)]
        shared: dict[str, tuple[int, int]] = {}
        shared_bytes = 0
        statements = []
        for line in body.splitlines():
            text = line.split("//", 1)[0].strip()
            if not text or text == "}" or text.startswith(".reg"):
                continue
            declared = re.fullmatch(r"\.shared\s+\.align\s+(\d+)\s+\.(\w+)\s+(\w+)\[(\d+)\];", text)
            if declared:
                align, kind, name, count = declared.groups()
                shared_bytes = -(-shared_bytes // int(align)) * int(align)
                size = int(kind[1:]) // 8 * int(count)
                shared[name] = (shared_bytes, size)
                shared_bytes += size
                continue
            statements.append(text.rstrip(";"))
        labels = {text[:-1]: i for i, text in enumerate(statements) if text.endswith(":")}
        return cls(params, shared, shared_bytes, statements, labels)


class _Threads:
    """The registers and state of the launched threads (one array slot per thread)."""

    def __init__(
        self, kernel: Kernel, values: dict[str, Any], memory: Memory, specials: dict[str, Array]
    ) -> None:
        self.kernel = kernel
        self.values = values
        self.memory = memory
        self.specials = specials
        self.count = len(specials["%tid.x"])
        self.block_index = specials["block_index"]
        blocks = int(self.block_index.max()) + 1 if self.count else 0
        self.shared = np.zeros(max(kernel.shared_bytes, 1) * blocks, np.uint8)
        self.registers: dict[str, Array] = {}
        self.carry = np.zeros(self.count, np.uint64)

    def read(self, operand: str, dtype: npt.DTypeLike) -> Array:
        if operand in self.specials:
            return self.specials[operand].astype(dtype)
        if operand in self.kernel.shared:
            return np.full(self.count, self.kernel.shared[operand][0], dtype)
        if operand.startswith("%"):
            register = self.registers[operand]
            if np.dtype(dtype).kind == "f" and register.dtype.kind in "ui":
                return register.astype(np.uint32).view(np.float32)
            return register.astype(dtype)
        if operand.startswith("0f"):
            (bits,) = struct.unpack(">f", bytes.fromhex(operand[2:]))
            return np.full(self.count, bits, np.float32)
        return np.full(self.count, int(operand, 0)).astype(dtype)

    def write(self, target: str, value: Array, mask: Array) -> None:
        old = self.registers.get(target)
        if old is None or old.dtype != value.dtype:
            old = np.zeros(self.count, value.dtype)
        self.registers[target] = np.where(mask, value, old)

    def address(self, operand: str, mask: Array) -> npt.NDArray[np.uint64]:
        inner = operand.strip("[]")
        base, _, offset = inner.partition("+")
        if base in self.kernel.shared:
            addresses = np.full(self.count, self.kernel.shared[base][0], np.uint64)
        else:
            addresses = self.registers[base].astype(np.uint64)
        return (addresses + np.uint64(int(offset or 0)))[mask]

    def shared_index(self, addresses: npt.NDArray[np.uint64], mask: Array) -> npt.NDArray[np.int64]:
        assert (addresses < self.kernel.shared_bytes).all(), "a shared access outside its arrays"
        size = max(self.kernel.shared_bytes, 1)
        return self.block_index[mask].astype(np.int64) * size + addresses.astype(np.int64)


def _space_memory(threads: _Threads, space: str) -> npt.NDArray[np.uint8]:
    return threads.shared if space == "shared" else threads.memory.data


def _step(threads: _Threads, opcode: str, args: list[str], mask: Array) -> None:
    """Executes one instruction on the threads in `mask`."""
    parts = opcode.split(".")
    name, kind = parts[0], parts[-1]
    if name == "ld" and parts[1] == "param":
        value = threads.values[args[1].strip("[]")]
        dtype = np.float32 if kind == "f32" else _INT_TYPES[kind]
        threads.write(args[0], np.full(threads.count, value).astype(dtype), mask)
    elif name in {"ld", "st", "red"}:
        space = parts[1]
        dtype = np.dtype(np.float32 if kind == "f32" else _INT_TYPES[kind])
        where = args[1] if name == "ld" else args[0]
        addresses = threads.address(where, mask)
        if space == "global":
            threads.memory.check(addresses, dtype.itemsize)
            index = (addresses // dtype.itemsize).astype(np.int64)
        else:
            assert (addresses % dtype.itemsize == 0).all(), "a misaligned shared access"
            index = threads.shared_index(addresses, mask) // dtype.itemsize
        view = _space_memory(threads, space).view(dtype)
        if name == "ld":
            loaded = np.zeros(threads.count, dtype)
            loaded[mask] = view[index]
            threads.write(args[0], loaded, mask)
        elif name == "st":
            view[index] = threads.read(args[1], dtype)[mask]
        else:
            assert parts[2] == "add", opcode
            np.add.at(view, index, threads.read(args[1], dtype)[mask])
    elif name == "mov" and kind == "b32" and args[0].startswith("%f"):
        threads.write(args[0], threads.read(args[1], np.uint32).view(np.float32), mask)
    elif name == "mov":
        dtype = np.float32 if kind == "f32" else _INT_TYPES[kind]
        threads.write(args[0], threads.read(args[1], dtype), mask)
    elif name == "cvta":
        threads.write(args[0], threads.read(args[1], np.uint64), mask)
    elif name == "cvt":
        _convert(threads, parts, args, mask)
    elif name == "setp":
        compare, dtype = parts[1], np.float32 if kind == "f32" else _INT_TYPES[kind]
        a, b = threads.read(args[1], dtype), threads.read(args[2], dtype)
        threads.write(args[0], _COMPARE[compare](a, b), mask)
    elif kind == "f32" and ".".join(parts[:-1]) in FLOAT_OPS:
        inputs = [threads.read(x, np.float32) for x in args[1:]]
        with np.errstate(all="ignore"):
            result = FLOAT_OPS[".".join(parts[:-1])](*inputs).astype(np.float32)
        threads.write(args[0], result, mask)
    elif name == "mul" and parts[1] == "wide":
        wide = np.int64 if kind == "s32" else np.uint64
        a, b = threads.read(args[1], _INT_TYPES[kind]), threads.read(args[2], _INT_TYPES[kind])
        threads.write(args[0], a.astype(wide) * b.astype(wide), mask)
    elif name == "mad" and parts[1] == "lo":
        dtype = _INT_TYPES[kind]
        a, b, c = (threads.read(x, dtype) for x in args[1:])
        threads.write(args[0], a * b + c, mask)
    elif name in {"shl", "shr"}:
        value = threads.read(args[1], _INT_TYPES[kind])
        amount = threads.read(args[2], np.uint32).astype(value.dtype)
        shifted = np.left_shift(value, amount) if name == "shl" else np.right_shift(value, amount)
        threads.write(args[0], shifted, mask)
    elif name == "add" and parts[1] == "cc":
        a, b = threads.read(args[1], np.uint64), threads.read(args[2], np.uint64)
        total = a + b
        threads.carry = np.where(mask, total >> np.uint64(32), threads.carry)
        threads.write(args[0], total.astype(np.uint32), mask)
    elif name == "addc":
        a, b = threads.read(args[1], np.uint64), threads.read(args[2], np.uint64)
        threads.write(args[0], (a + b + threads.carry).astype(np.uint32), mask)
    elif ".".join(parts[:-1]) in _INT_OPS:
        dtype = _INT_TYPES[kind]
        a, b = threads.read(args[1], dtype), threads.read(args[2], dtype)
        threads.write(args[0], _INT_OPS[".".join(parts[:-1])](a, b).astype(dtype), mask)
    else:
        raise AssertionError(f"the interpreter does not know {opcode} {', '.join(args)}")


def _convert(threads: _Threads, parts: list[str], args: list[str], mask: Array) -> None:
    """cvt: integer widening, f16 <-> f32, and f32 rounding to integers."""
    target, source = parts[-2], parts[-1]
    if target == "f32" and source == "f16":
        value = threads.read(args[1], np.uint16).view(np.float16).astype(np.float32)
    elif target == "f16" and source == "f32":
        value = threads.read(args[1], np.float32).astype(np.float16).view(np.uint16)
    elif target == "f32" and source == "f32":
        assert parts[1] == "rni", parts
        value = np.rint(threads.read(args[1], np.float32))
    elif source == "f32":
        assert parts[1] == "rzi", parts
        with np.errstate(all="ignore"):
            floats = np.trunc(threads.read(args[1], np.float32).astype(np.float64))
        info = np.iinfo(_INT_TYPES[target])
        value = np.clip(np.nan_to_num(floats, nan=0.0), info.min, info.max).astype(
            _INT_TYPES[target]
        )
    else:
        value = threads.read(args[1], _INT_TYPES[source]).astype(_INT_TYPES[target])
    threads.write(args[0], value, mask)


def _specials(grid: Dim3, block: Dim3, blocks: Sequence[Dim3]) -> dict[str, Array]:
    per_block = block[0] * block[1] * block[2]
    local = np.arange(per_block, dtype=np.int64)
    tid = (local % block[0], local // block[0] % block[1], local // (block[0] * block[1]))
    specials: dict[str, Array] = {}
    for axis, name in enumerate("xyz"):
        specials[f"%tid.{name}"] = np.tile(tid[axis], len(blocks)).astype(np.uint32)
        specials[f"%ctaid.{name}"] = np.repeat(
            np.array([b[axis] for b in blocks], np.uint64), per_block
        ).astype(np.uint32)
        specials[f"%ntid.{name}"] = np.full(per_block * len(blocks), block[axis], np.uint32)
        specials[f"%nctaid.{name}"] = np.full(per_block * len(blocks), grid[axis], np.uint32)
    specials["block_index"] = np.repeat(np.arange(len(blocks)), per_block)
    return specials


def all_blocks(grid: Dim3) -> list[Dim3]:
    """Every block of a (small) grid."""
    return [(x, y, z) for z in range(grid[2]) for y in range(grid[1]) for x in range(grid[0])]


def run(
    ptx: str,
    memory: Memory,
    scalars: Sequence[int | float | np.generic],
    *,
    grid: Dim3,
    block: Dim3,
    blocks: Sequence[Dim3] | None = None,
    max_steps: int = 1_000_000,
) -> None:
    """Runs the entry of `ptx` over `blocks` of the launch (all of them by default).

    The kernel's pointer parameters take `memory`'s buffers in order, the others
    `scalars` in order; the kernel writes `memory` in place.

    Raises:
        KernelDidNotFinishError: more than `max_steps` instructions ran.
        AssertionError: an unknown instruction, or an access outside the buffers.
    """
    kernel = Kernel.parse(ptx)
    pointers = [name for name, kind in kernel.params if kind == "u64"][: len(memory.buffers)]
    others = [name for name, _ in kernel.params if name not in pointers]
    assert len(others) == len(scalars), (kernel.params, scalars)
    values: dict[str, Any] = {
        name: b.base for name, b in zip(pointers, memory.buffers, strict=True)
    }
    values.update(zip(others, scalars, strict=True))
    chosen = list(blocks) if blocks is not None else all_blocks(grid)
    assert all(all(0 <= b[i] < grid[i] for i in range(3)) for b in chosen), chosen
    threads = _Threads(kernel, values, memory, _specials(grid, block, chosen))
    pc = np.zeros(threads.count, np.int64)
    done = np.zeros(threads.count, np.bool_)
    waiting = np.zeros(threads.count, np.bool_)  # at a bar.sync, for the rest of the block
    per_block = block[0] * block[1] * block[2]
    warp = threads.block_index * -(-per_block // 32) + np.arange(threads.count) % per_block // 32
    statements, labels = kernel.statements, kernel.labels
    for _ in range(max_steps):
        runnable = ~done & ~waiting
        if not runnable.any():
            if done.all():
                return
            # Every live thread of some block waits at its barrier: release those blocks.
            for index in np.unique(threads.block_index[waiting]):
                members = threads.block_index == index
                if not (members & ~done & ~waiting).any():
                    pc[members & waiting] += 1
                    waiting[members] = False
            continue
        current_warp = int(warp[runnable].min())
        in_warp = runnable & (warp == current_warp)
        current = int(pc[in_warp].min())
        mask = in_warp & (pc == current)
        text = statements[current]
        if text.endswith(":"):
            pc[mask] += 1
            continue
        if text.startswith("bar.sync"):
            waiting |= mask
            continue
        predicate = None
        if text.startswith("@"):
            guard, text = text[1:].split(None, 1)
            predicate = threads.registers[guard.lstrip("!")]
            predicate = ~predicate if guard.startswith("!") else predicate
        opcode, _, rest = text.partition(" ")
        taking = mask if predicate is None else mask & predicate
        if opcode == "bra":
            pc[taking] = labels[rest.strip()]
            pc[mask & ~taking] += 1
            continue
        if opcode == "ret":
            done |= taking
            pc[mask & ~taking] += 1
            continue
        _step(threads, opcode, [part.strip() for part in rest.split(",")], taking)
        pc[mask] += 1
    raise KernelDidNotFinishError(f"still running after {max_steps} instructions")
