"""The emitted elementwise PTX computes what its NumPy meaning says, executed instruction by
instruction.

The cpu backend runs NumPy for emitted kernels and never reads their PTX, so a wrong
instruction (say `sub` with its operands swapped) would pass every cpu test. Here a small
SIMT interpreter runs the emitted kernel body itself, all threads of the launch at once
(each register is a NumPy array over the threads), on the launch cases the GPU test uses
(`tests.emitted_cases`), and compares the buffers it writes with their expectations.

The interpreter knows only the instructions the one-thread-per-element kernels use; any
other instruction fails the test, so an emitter change that needs more has to teach it.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from tensorwasm_common.gpu_abi import ArgTag, ScalarArg
from tensorwasm_jit.ptx import emit
from tensorwasm_jit.ptx.elementwise import BINARY_OPS, UNARY_OPS

from tests.emitted_cases import Case, all_cases

Array = npt.NDArray[Any]
ELEMENTWISE_OPS = {"vector_add", "saxpy", *UNARY_OPS, *BINARY_OPS}
CASES = [case for case in all_cases() if case.spec.op in ELEMENTWISE_OPS]
_GUARD = 256  # bytes between buffers, so an address past a buffer is caught, not aliased

# The f32 arithmetic of the emitted kernels, by PTX opcode (without its type suffix).
_FLOAT_OPS: dict[str, Callable[..., Array]] = {
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


@dataclass
class Launch:
    """One launch's state: registers over all threads, the active mask, global memory."""

    threads: int
    specials: dict[str, npt.NDArray[np.uint32]]
    params: dict[str, int | np.uint32 | np.float32]
    memory: npt.NDArray[np.uint8]
    buffers: list[tuple[int, int]]  # (base address, size in bytes)
    registers: dict[str, Array] = field(default_factory=dict)
    active: npt.NDArray[np.bool_] = field(init=False)

    def __post_init__(self) -> None:
        self.active = np.ones(self.threads, np.bool_)

    def value(self, operand: str) -> Array:
        """A register, special register or immediate, broadcast over the threads."""
        if operand in self.specials:
            return self.specials[operand]
        if operand.startswith("%"):
            return self.registers[operand]
        if operand.startswith("0f"):
            (bits,) = struct.unpack("<f", bytes.fromhex(operand[2:])[::-1])
            return np.full(self.threads, bits, np.float32)
        return np.full(self.threads, int(operand), np.uint64)

    def addresses(self, operand: str, width: int) -> npt.NDArray[np.uint64]:
        """The active threads' addresses of `[reg]`, each checked to lie inside a buffer."""
        addresses = self.registers[operand.strip("[]")][self.active].astype(np.uint64)
        inside = np.zeros(addresses.shape, np.bool_)
        for base, size in self.buffers:
            inside |= (addresses >= base) & (addresses + width <= base + size)
        assert inside.all(), f"an access outside every buffer: {addresses[~inside][:4]}"
        assert (addresses % width == 0).all(), "a misaligned access"
        return addresses

    def load(self, target: str, operand: str, dtype: type[np.generic]) -> None:
        width = np.dtype(dtype).itemsize
        loaded = np.zeros(self.threads, dtype)
        loaded[self.active] = self.memory.view(dtype)[self.addresses(operand, width) // width]
        self.registers[target] = loaded

    def store(self, operand: str, source: str, dtype: type[np.generic]) -> None:
        width = np.dtype(dtype).itemsize
        where = self.addresses(operand, width) // width
        self.memory.view(dtype)[where] = self.registers[source][self.active].astype(dtype)


def _instructions(ptx: str) -> tuple[list[str], list[str]]:
    """(the entry's parameter names in order, its body's instructions and labels)."""
    header, body = ptx.split(".visible .entry", 1)[1].split("{", 1)
    params = re.findall(r"\.param\s+\.\w+\s+(\w+)", header)
    statements = []
    for line in body.splitlines():
        text = line.split("//", 1)[0].strip()
        if text and text != "}" and not text.startswith(".reg"):
            statements.append(text.rstrip(";"))
    return params, statements


def _operands(rest: str) -> list[str]:
    return [part.strip() for part in rest.split(",")]


def _step(launch: Launch, opcode: str, args: list[str]) -> None:
    """Executes one unpredicated instruction on the active threads."""
    regs = launch.registers
    if opcode == "ld.param.u32" or opcode == "ld.param.u64" or opcode == "ld.param.f32":
        value = launch.params[args[1].strip("[]")]
        kind = {"u32": np.uint32, "u64": np.uint64, "f32": np.float32}[opcode.rsplit(".", 1)[1]]
        regs[args[0]] = np.full(launch.threads, value, kind)
    elif opcode == "mov.u32":
        regs[args[0]] = launch.value(args[1]).astype(np.uint32)
    elif opcode == "mad.lo.u32":
        a, b, c = (launch.value(x).astype(np.uint64) for x in args[1:])
        regs[args[0]] = ((a * b + c) & 0xFFFFFFFF).astype(np.uint32)
    elif opcode == "setp.ge.u32":
        regs[args[0]] = launch.value(args[1]) >= launch.value(args[2])
    elif opcode == "mul.wide.u32":
        regs[args[0]] = launch.value(args[1]).astype(np.uint64) * launch.value(args[2])
    elif opcode == "cvta.to.global.u64":
        regs[args[0]] = launch.value(args[1]).copy()
    elif opcode == "add.s64":
        regs[args[0]] = launch.value(args[1]) + launch.value(args[2])
    elif opcode == "ld.global.f32":
        launch.load(args[0], args[1], np.float32)
    elif opcode == "ld.global.b16":
        launch.load(args[0], args[1], np.uint16)
    elif opcode == "st.global.f32":
        launch.store(args[0], args[1], np.float32)
    elif opcode == "st.global.b16":
        launch.store(args[0], args[1], np.uint16)
    elif opcode == "cvt.f32.f16":
        regs[args[0]] = regs[args[1]].view(np.float16).astype(np.float32)
    elif opcode == "cvt.rn.f16.f32":
        regs[args[0]] = regs[args[1]].astype(np.float16).view(np.uint16)
    elif opcode.endswith(".f32") and opcode[: -len(".f32")] in _FLOAT_OPS:
        inputs = [launch.value(x).astype(np.float32) for x in args[1:]]
        with np.errstate(all="ignore"):
            regs[args[0]] = _FLOAT_OPS[opcode[: -len(".f32")]](*inputs).astype(np.float32)
    else:
        raise AssertionError(f"the interpreter does not know {opcode} {', '.join(args)}")


def run_kernel(ptx: str, case: Case) -> list[Array]:
    """Runs the emitted kernel for `case`'s launch; returns its buffers as written."""
    params, statements = _instructions(ptx)
    pointers = params[: len(case.arrays)]
    scalars = params[len(case.arrays) :]
    assert len(scalars) == len(case.scalars), (params, case.scalars)
    buffers, offset = [], _GUARD
    for array in case.arrays:
        buffers.append((offset, array.nbytes))
        offset += array.nbytes + _GUARD
    memory = np.full(offset, 0xFF, np.uint8)
    for (base, size), array in zip(buffers, case.arrays, strict=True):
        memory[base : base + size] = np.frombuffer(array.tobytes(), np.uint8)
    values: dict[str, int | np.uint32 | np.float32] = {
        name: base for name, (base, _) in zip(pointers, buffers, strict=True)
    }
    for name, scalar in zip(scalars, case.scalars, strict=True):
        values[name] = _scalar(scalar)
    grid, block = case.grid[0], case.block[0]
    assert case.grid[1:] == case.block[1:] == (1, 1), "one-dimensional launches only"
    thread = np.arange(grid * block, dtype=np.uint32)
    specials = {"%ctaid.x": thread // block, "%ntid.x": np.full_like(thread, block),
                "%tid.x": thread % block}  # fmt: skip
    launch = Launch(grid * block, specials, values, memory, buffers)
    labels = {text[:-1]: index for index, text in enumerate(statements) if text.endswith(":")}
    for text in statements:
        if text.endswith(":"):
            continue
        if text == "ret":
            break
        if text.startswith("@"):
            predicate, opcode, target = text[1:].split()
            # Only a forward branch to `label: ret` (the bounds check): those threads end.
            assert opcode == "bra" and statements[labels[target] + 1 :] == ["ret"], text
            launch.active &= ~launch.registers[predicate]
            continue
        opcode, _, rest = text.partition(" ")
        _step(launch, opcode, _operands(rest))
    return [
        memory[base : base + size].view(array.dtype).copy()
        for (base, size), array in zip(buffers, case.arrays, strict=True)
    ]


def _scalar(scalar: ScalarArg) -> np.uint32 | np.float32:
    if scalar.tag is ArgTag.F32:
        return np.float32(struct.unpack("<f", struct.pack("<I", scalar.value))[0])
    assert scalar.tag is ArgTag.U32, scalar
    return np.uint32(scalar.value)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_emitted_ptx_computes_its_numpy_meaning(case: Case) -> None:
    written = run_kernel(emit(case.spec).ptx, case)
    for index, expected in case.expected.items():
        got = written[index]
        if case.rtol or case.atol:
            np.testing.assert_allclose(got, expected, rtol=case.rtol, atol=case.atol)
        else:
            np.testing.assert_array_equal(got, expected, err_msg=case.name)


def test_every_elementwise_op_and_dtype_has_a_case() -> None:
    # The ops the emitter registers and the cases' ops agree (test_emitted_kernels checks
    # that every emitter has a case); here, that no elementwise case is left out.
    assert {case.spec.op for case in CASES} == ELEMENTWISE_OPS
    assert {case.spec.dtype for case in CASES if case.spec.op != "saxpy"} == {"f32", "f16"}
