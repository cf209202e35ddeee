"""Emitters of one-thread-per-element ops: vector_add, saxpy, unary and binary elementwise.

Every kernel here indexes `i = blockIdx.x * blockDim.x + threadIdx.x` in 64 bits (a launch
may have more than 2^32 threads), does nothing for `i >= n`, and takes its buffers as
`.u64` pointers then `n` as `.u32`. Only the first y/z slice works (`threadIdx.y ==
threadIdx.z == blockIdx.y == blockIdx.z == 0`, like the kernel library's `saxpy.cu`): the
other slices would repeat each element, and an in-place op (`saxpy`, or `neg(x, x)`) would
apply more than once or race. f16 kernels load
halves, compute in f32 and round once back to f16 (`cvt.rn.f16.f32`); for + - * / and sqrt
that equals the correctly rounded f16 result (f32 has more than 2 * 11 + 2 bits).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from tensorwasm_jit.ptx.core import ELEMENTS, Emitter, KernelSpec, lines, register

# log2(e) as an f32 bit pattern, for exp(x) = 2^(x * log2(e)).
_LOG2_E = "0f3FB8AA3B"
_ZERO = "0f00000000"

# exp(x) = 2^k * 2^(r * log2(e)) with k = rint(x * log2(e)) and r = x - k * ln(2), computed
# with ln(2) split in two (Cody-Waite: k * ln2_hi is exact for |k| <= 2^8), so ex2.approx
# sees |r * log2(e)| <= 1/2 and the rounding of `x * log2(e)` (up to 2^-17 relative near
# |x| = 88) no longer reaches the result. k is clamped to [-252, 254] (past it the result
# is 0 or inf anyway) and 2^k applied as two exact powers of two built from their bits, so
# neither half overflows and a subnormal result is rounded once.
_EXP = (
    f"mul.rn.f32 %f3, %f1, {_LOG2_E};",
    "cvt.rni.f32.f32 %f4, %f3;",
    "max.f32 %f4, %f4, 0fC37C0000;",  # -252
    "min.f32 %f4, %f4, 0f437E0000;",  # 254
    "fma.rn.f32 %f5, %f4, 0fBF317200, %f1;",  # - k * ln2_hi
    "fma.rn.f32 %f5, %f4, 0fB5BFBE8E, %f5;",  # - k * ln2_lo
    f"mul.rn.f32 %f5, %f5, {_LOG2_E};",
    "ex2.approx.f32 %f6, %f5;",
    "cvt.rzi.s32.f32 %r6, %f4;",
    "shr.s32 %r7, %r6, 1;",
    "sub.s32 %r8, %r6, %r7;",
    "add.s32 %r7, %r7, 127;",
    "shl.b32 %r7, %r7, 23;",
    "mov.b32 %f7, %r7;",
    "add.s32 %r8, %r8, 127;",
    "shl.b32 %r8, %r8, 23;",
    "mov.b32 %f8, %r8;",
    "mul.rn.f32 %f6, %f6, %f7;",
    "mul.rn.f32 %f2, %f6, %f8;",
)

# The f32 instruction(s) of each unary op: `%f1` is the input, the result goes to `%f2`.
UNARY_OPS: dict[str, tuple[str, ...]] = {
    "relu": (f"max.f32 %f2, %f1, {_ZERO};",),
    "neg": ("neg.f32 %f2, %f1;",),
    "abs": ("abs.f32 %f2, %f1;",),
    "sqrt": ("sqrt.rn.f32 %f2, %f1;",),
    "exp": _EXP,
}
# The f32 instruction of each binary op: inputs `%f1`, `%f3`; result `%f2`.
BINARY_OPS: dict[str, str] = {
    "add": "add.rn.f32 %f2, %f1, %f3;",
    "sub": "sub.rn.f32 %f2, %f1, %f3;",
    "mul": "mul.rn.f32 %f2, %f1, %f3;",
    "div": "div.rn.f32 %f2, %f1, %f3;",
    "max": "max.f32 %f2, %f1, %f3;",
    "min": "min.f32 %f2, %f1, %f3;",
}
_INPUT_REGISTERS = ("%f1", "%f3")


def _elementwise(
    entry: str,
    dtype: str,
    *,
    inputs: Sequence[str],
    output: str,
    compute: Sequence[str],
    scalar_params: Sequence[tuple[str, str]] = (),
) -> str:
    """Renders a bounds-checked one-thread-per-element kernel.

    Args:
        entry: The entry name.
        dtype: "f32" or "f16" (buffers' element type; arithmetic is f32).
        inputs: Buffer parameters read, loaded into `%f1`, `%f3` in this order.
        output: The buffer parameter written with `%f2` (may be one of `inputs`).
        compute: f32 instructions turning the inputs into `%f2`.
        scalar_params: `(name, ptx type)` parameters after the buffers, before `n`.
    """
    el = ELEMENTS[dtype]
    buffers = list(dict.fromkeys([*inputs, output]))
    params = [f"    .param .u64 {name}" for name in buffers]
    params += [f"    .param {ptx_type} {name}" for name, ptx_type in scalar_params]
    params.append("    .param .u32 n")
    header = f".visible .entry {entry}(\n" + ",\n".join(params) + "\n)\n"
    body: list[str] = [
        "{",
        ".reg .pred %p<2>;",
        ".reg .b32 %r<9>;",
        f".reg .b64 %rd<{4 + 3 * len(buffers)}>;",
        ".reg .f32 %f<10>;",
        ".reg .b16 %h<4>;",
        "",
        # Only the first y/z slice: another would repeat (or race on) every element.
        "mov.u32 %r2, %tid.y;",
        "mov.u32 %r3, %tid.z;",
        "or.b32 %r2, %r2, %r3;",
        "mov.u32 %r3, %ctaid.y;",
        "or.b32 %r2, %r2, %r3;",
        "mov.u32 %r3, %ctaid.z;",
        "or.b32 %r2, %r2, %r3;",
        "setp.ne.u32 %p1, %r2, 0;",
        "@%p1 bra $L__exit;",
        # i in 64 bits: grid.x * block.x may pass 2^32, where a u32 index would wrap.
        "ld.param.u32 %r1, [n];",
        "mov.u32 %r2, %ctaid.x;",
        "mov.u32 %r3, %ntid.x;",
        "mov.u32 %r4, %tid.x;",
        "mul.wide.u32 %rd2, %r2, %r3;",
        "cvt.u64.u32 %rd3, %r4;",
        "add.s64 %rd2, %rd2, %rd3;",
        "cvt.u64.u32 %rd3, %r1;",
        "setp.ge.u64 %p1, %rd2, %rd3;",
        "@%p1 bra $L__exit;",
        f"mul.lo.u64 %rd1, %rd2, {el.size};",
    ]
    address: dict[str, str] = {}
    for index, name in enumerate(buffers):
        param_reg, global_reg, element_reg = (f"%rd{4 + 3 * index + k}" for k in range(3))
        body += [
            f"ld.param.u64 {param_reg}, [{name}];",
            f"cvta.to.global.u64 {global_reg}, {param_reg};",
            f"add.s64 {element_reg}, {global_reg}, %rd1;",
        ]
        address[name] = element_reg
    for name, ptx_type in scalar_params:
        body.append(f"ld.param{ptx_type} %f9, [{name}];")
    for name, register_name in zip(inputs, _INPUT_REGISTERS, strict=False):
        if dtype == "f32":
            body.append(f"ld.global.f32 {register_name}, [{address[name]}];")
        else:
            body += [
                f"ld.global.b16 %h1, [{address[name]}];",
                f"cvt.f32.f16 {register_name}, %h1;",
            ]
    body += list(compute)
    if dtype == "f32":
        body.append(f"st.global.f32 [{address[output]}], %f2;")
    else:
        body += ["cvt.rn.f16.f32 %h2, %f2;", f"st.global.b16 [{address[output]}], %h2;"]
    body += ["$L__exit:", "ret;", "}"]
    return header + lines(*body)


class VectorAddEmitter(Emitter):
    """`c[i] = a[i] + b[i]`; the kernel library's signature `(a, b, c, unsigned n)`."""

    op: ClassVar[str] = "vector_add"
    dtypes: ClassVar[frozenset[str]] = frozenset({"f32", "f16"})

    def render(self, spec: KernelSpec) -> str:
        """Returns the bounds-checked element-wise add."""
        return _elementwise(
            self.entry_name(spec), spec.dtype, inputs=("a", "b"), output="c",
            compute=[BINARY_OPS["add"]],
        )  # fmt: skip


class SaxpyEmitter(Emitter):
    """`y[i] = alpha * x[i] + y[i]`, one `fma.rn.f32`; signature `(x, y, float alpha, n)`."""

    op: ClassVar[str] = "saxpy"
    dtypes: ClassVar[frozenset[str]] = frozenset({"f32"})

    def render(self, spec: KernelSpec) -> str:
        """Returns the fused multiply-add kernel."""
        return _elementwise(
            self.entry_name(spec),
            spec.dtype,
            inputs=("x", "y"),
            output="y",
            compute=["fma.rn.f32 %f2, %f9, %f1, %f3;"],
            scalar_params=[("alpha", ".f32")],
        )


class UnaryEmitter(Emitter):
    """`y[i] = f(x[i])` for one unary op; signature `(x, y, n)`.

    `exp` reduces its argument first (see `_EXP`), then uses `ex2.approx.f32`: within a
    few f32 ulps over the whole range; the other ops are exact (`relu` and `max`/`min`
    ignore a NaN operand).
    """

    dtypes: ClassVar[frozenset[str]] = frozenset({"f32", "f16"})

    def __init__(self, op: str) -> None:
        self.op = op  # type: ignore[misc]  # one instance per op

    def render(self, spec: KernelSpec) -> str:
        """Returns the kernel of this op."""
        return _elementwise(
            self.entry_name(spec), spec.dtype, inputs=("x",), output="y",
            compute=UNARY_OPS[self.op],
        )  # fmt: skip


class BinaryEmitter(Emitter):
    """`c[i] = a[i] <op> b[i]` for one binary op; signature `(a, b, c, n)`."""

    dtypes: ClassVar[frozenset[str]] = frozenset({"f32", "f16"})

    def __init__(self, op: str) -> None:
        self.op = op  # type: ignore[misc]  # one instance per op

    def render(self, spec: KernelSpec) -> str:
        """Returns the kernel of this op."""
        return _elementwise(
            self.entry_name(spec),
            spec.dtype,
            inputs=("a", "b"),
            output="c",
            compute=[BINARY_OPS[self.op]],
        )


def register_all() -> None:
    """Registers this module's emitters (called once by `emit`)."""
    register(VectorAddEmitter())
    register(SaxpyEmitter())
    for op in UNARY_OPS:
        register(UnaryEmitter(op))
    for op in BINARY_OPS:
        register(BinaryEmitter(op))
