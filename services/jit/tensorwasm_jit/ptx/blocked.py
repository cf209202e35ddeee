"""Emitters of block-structured ops: reduce_sum, tiled matmul (shared memory), conv2d 3x3.

Shapes are baked into the kernel (the jit cache emits one kernel per shape), so loops over
a tile are unrolled and bounds are immediates. Each kernel returns at once when launched
with a block shape it was not emitted for, rather than reading outside its shared memory.
"""

from __future__ import annotations

from typing import ClassVar

from tensorwasm_jit.errors import InvalidArgumentError
from tensorwasm_jit.ptx.core import (
    Emitter,
    KernelSpec,
    check_range,
    lines,
    register,
)

# Each matrix dimension at most 2^15, so every row-major index fits in 31 bits.
MAX_MATMUL_DIM = 1 << 15
MATMUL_TILES = (8, 16, 32)
# conv2d images up to 2^15 x 2^15 (index fits in 31 bits).
MAX_CONV_DIM = 1 << 15
REDUCE_BLOCKS = (32, 64, 128, 256, 512, 1024)


class ReduceSumEmitter(Emitter):
    """`output[0] += sum(input[:n])`; signature `(input, output, unsigned n)`.

    Launch with block `(block, 1, 1)` and any grid: each thread sums a grid-stride slice,
    each block reduces in shared memory (a tree of `block` f32 slots) and its thread 0 adds
    the block's sum with one `red.global.add.f32`. Blocks with `blockIdx.y` or `.z` > 0 do
    nothing. The order of the additions is the GPU's: it agrees with an exact sum within
    f32 rounding, not bit for bit.
    """

    op: ClassVar[str] = "reduce_sum"
    dtypes: ClassVar[frozenset[str]] = frozenset({"f32"})
    param_names: ClassVar[frozenset[str]] = frozenset({"block"})
    default_params: ClassVar[dict[str, int]] = {"block": 256}

    def check(self, spec: KernelSpec) -> None:
        """Also requires `block` to be a power of two in [32, 1024]."""
        super().check(spec)
        if dict(spec.params)["block"] not in REDUCE_BLOCKS:
            raise InvalidArgumentError(
                f"op 'reduce_sum': block must be one of {list(REDUCE_BLOCKS)}",
                metadata={"field": "params.block"},
            )

    def render(self, spec: KernelSpec) -> str:
        """Returns the grid-stride, shared-memory tree reduction."""
        block = dict(spec.params)["block"]
        header = (
            f".visible .entry {self.entry_name(spec)}(\n"
            "    .param .u64 input,\n    .param .u64 output,\n    .param .u32 n\n)\n"
        )
        body = [
            "{",
            ".reg .pred %p<4>;",
            ".reg .b32 %r<16>;",
            ".reg .b64 %rd<8>;",
            ".reg .f32 %f<6>;",
            f".shared .align 4 .f32 partial[{block}];",
            "",
            *_require_block(block, 1),
            "mov.u32 %r1, %ctaid.y;",
            "mov.u32 %r2, %ctaid.z;",
            "or.b32 %r1, %r1, %r2;",
            "setp.ne.u32 %p1, %r1, 0;",
            "@%p1 bra $L__exit;",
            # Index and stride in 64 bits: grid.x * block reaches 2^41, where a u32
            # stride would wrap (to 0 at 2^32: a loop that never ends; above it, to a
            # small stride that sums elements twice). i < n < 2^32, so i + stride fits.
            "ld.param.u32 %r3, [n];",
            "cvt.u64.u32 %rd7, %r3;",
            "mov.u32 %r4, %tid.x;",
            "mov.u32 %r5, %ctaid.x;",
            "mov.u32 %r6, %nctaid.x;",
            f"mul.wide.u32 %rd3, %r5, {block};",
            "cvt.u64.u32 %rd4, %r4;",
            "add.s64 %rd3, %rd3, %rd4;",
            f"mul.wide.u32 %rd5, %r6, {block};",
            "ld.param.u64 %rd1, [input];",
            "cvta.to.global.u64 %rd2, %rd1;",
            "mov.f32 %f1, 0f00000000;",
            "$L__stride:",
            "setp.ge.u64 %p2, %rd3, %rd7;",
            "@%p2 bra $L__reduce;",
            "shl.b64 %rd4, %rd3, 2;",
            "add.s64 %rd4, %rd2, %rd4;",
            "ld.global.f32 %f2, [%rd4];",
            "add.rn.f32 %f1, %f1, %f2;",
            "add.s64 %rd3, %rd3, %rd5;",
            "bra $L__stride;",
            "$L__reduce:",
            "mov.u32 %r10, partial;",
            "shl.b32 %r11, %r4, 2;",
            "add.u32 %r12, %r10, %r11;",
            "st.shared.f32 [%r12], %f1;",
            "bar.sync 0;",
        ]
        stride = block // 2
        while stride >= 1:
            body += [
                f"setp.ge.u32 %p3, %r4, {stride};",
                f"@%p3 bra $L__half{stride};",
                "ld.shared.f32 %f3, [%r12];",
                f"ld.shared.f32 %f4, [%r12+{4 * stride}];",
                "add.rn.f32 %f3, %f3, %f4;",
                "st.shared.f32 [%r12], %f3;",
                f"$L__half{stride}:",
                "bar.sync 0;",
            ]
            stride //= 2
        body += [
            "setp.ne.u32 %p3, %r4, 0;",
            "@%p3 bra $L__exit;",
            "ld.shared.f32 %f5, [partial];",
            "ld.param.u64 %rd5, [output];",
            "cvta.to.global.u64 %rd6, %rd5;",
            "red.global.add.f32 [%rd6], %f5;",
            "$L__exit:",
            "ret;",
            "}",
        ]
        return header + lines(*body)


def _require_block(x: int, y: int) -> list[str]:
    """Lines that return unless the block is exactly `(x, y, 1)`."""
    return [
        "mov.u32 %r13, %ntid.x;",
        f"setp.ne.u32 %p1, %r13, {x};",
        "@%p1 bra $L__exit;",
        "mov.u32 %r13, %ntid.y;",
        f"setp.ne.u32 %p1, %r13, {y};",
        "@%p1 bra $L__exit;",
        "mov.u32 %r13, %ntid.z;",
        "setp.ne.u32 %p1, %r13, 1;",
        "@%p1 bra $L__exit;",
    ]


class MatmulEmitter(Emitter):
    """`C[m x n] = A[m x k] @ B[k x n]`, row-major f32; signature `(a, b, c)`.

    Tiled with shared memory: block `(tile, tile, 1)`, grid `(ceil(n/tile), ceil(m/tile), 1)`.
    Each block loads a `tile x tile` tile of A and of B per step (zeros past the edges),
    synchronises, and each thread accumulates `tile` fused multiply-adds (unrolled) into
    its element of C. `tile` is 8, 16 (default) or 32.
    """

    op: ClassVar[str] = "matmul"
    dtypes: ClassVar[frozenset[str]] = frozenset({"f32"})
    param_names: ClassVar[frozenset[str]] = frozenset({"m", "n", "k", "tile"})
    required_params: ClassVar[frozenset[str]] = frozenset({"m", "n", "k"})
    default_params: ClassVar[dict[str, int]] = {"tile": 16}

    def check(self, spec: KernelSpec) -> None:
        """Also bounds m, n, k to [1, 2^15] and the tile to 8, 16 or 32."""
        super().check(spec)
        for name in ("m", "n", "k"):
            check_range(spec, name, 1, MAX_MATMUL_DIM)
        if dict(spec.params)["tile"] not in MATMUL_TILES:
            raise InvalidArgumentError(
                f"op 'matmul': tile must be one of {list(MATMUL_TILES)}",
                metadata={"field": "params.tile"},
            )

    def render(self, spec: KernelSpec) -> str:
        """Returns the shared-memory tiled kernel for this shape."""
        p = dict(spec.params)
        m, n, k, tile = p["m"], p["n"], p["k"], p["tile"]
        header = (
            f".visible .entry {self.entry_name(spec)}(\n"
            "    .param .u64 a,\n    .param .u64 b,\n    .param .u64 c\n)\n"
        )
        body = [
            "{",
            ".reg .pred %p<8>;",
            ".reg .b32 %r<24>;",
            ".reg .b64 %rd<12>;",
            ".reg .f32 %f<6>;",
            f".shared .align 4 .f32 tile_a[{tile * tile}];",
            f".shared .align 4 .f32 tile_b[{tile * tile}];",
            "",
            *_require_block(tile, tile),
            "mov.u32 %r1, %tid.x;",
            "mov.u32 %r2, %tid.y;",
            "mov.u32 %r3, %ctaid.x;",
            "mov.u32 %r4, %ctaid.y;",
            f"mad.lo.u32 %r5, %r4, {tile}, %r2;",  # row
            f"mad.lo.u32 %r6, %r3, {tile}, %r1;",  # col
            "ld.param.u64 %rd1, [a];",
            "ld.param.u64 %rd2, [b];",
            "ld.param.u64 %rd3, [c];",
            "cvta.to.global.u64 %rd4, %rd1;",
            "cvta.to.global.u64 %rd5, %rd2;",
            "cvta.to.global.u64 %rd6, %rd3;",
            "mov.u32 %r7, tile_a;",
            "mov.u32 %r8, tile_b;",
            f"mad.lo.u32 %r9, %r2, {tile}, %r1;",
            "shl.b32 %r9, %r9, 2;",
            "add.u32 %r10, %r7, %r9;",  # &tile_a[ty][tx]
            "add.u32 %r11, %r8, %r9;",  # &tile_b[ty][tx]
            f"mad.lo.u32 %r12, %r2, {4 * tile}, %r7;",  # &tile_a[ty][0]
            "shl.b32 %r13, %r1, 2;",
            "add.u32 %r13, %r8, %r13;",  # &tile_b[0][tx]
            f"setp.lt.u32 %p2, %r5, {m};",
            f"setp.lt.u32 %p3, %r6, {n};",
            "mov.f32 %f1, 0f00000000;",
            "mov.u32 %r14, 0;",  # the tile's first index along k
            "$L__tile:",
            "add.u32 %r15, %r14, %r1;",
            f"setp.lt.u32 %p4, %r15, {k};",
            "and.pred %p4, %p4, %p2;",
            "mov.f32 %f2, 0f00000000;",
            f"mad.lo.u32 %r16, %r5, {k}, %r15;",
            "mul.wide.u32 %rd7, %r16, 4;",
            "add.s64 %rd8, %rd4, %rd7;",
            "@%p4 ld.global.f32 %f2, [%rd8];",
            "st.shared.f32 [%r10], %f2;",
            "add.u32 %r17, %r14, %r2;",
            f"setp.lt.u32 %p5, %r17, {k};",
            "and.pred %p5, %p5, %p3;",
            "mov.f32 %f3, 0f00000000;",
            f"mad.lo.u32 %r18, %r17, {n}, %r6;",
            "mul.wide.u32 %rd9, %r18, 4;",
            "add.s64 %rd10, %rd5, %rd9;",
            "@%p5 ld.global.f32 %f3, [%rd10];",
            "st.shared.f32 [%r11], %f3;",
            "bar.sync 0;",
        ]
        for i in range(tile):
            body += [
                f"ld.shared.f32 %f4, [%r12+{4 * i}];",
                f"ld.shared.f32 %f5, [%r13+{4 * tile * i}];",
                "fma.rn.f32 %f1, %f4, %f5, %f1;",
            ]
        body += [
            "bar.sync 0;",
            f"add.u32 %r14, %r14, {tile};",
            f"setp.lt.u32 %p6, %r14, {k};",
            "@%p6 bra $L__tile;",
            "and.pred %p7, %p2, %p3;",
            "@!%p7 bra $L__exit;",
            f"mad.lo.u32 %r19, %r5, {n}, %r6;",
            "mul.wide.u32 %rd11, %r19, 4;",
            "add.s64 %rd11, %rd6, %rd11;",
            "st.global.f32 [%rd11], %f1;",
            "$L__exit:",
            "ret;",
            "}",
        ]
        return header + lines(*body)


class Conv2dEmitter(Emitter):
    """3x3 single-channel convolution, "same" zero padding; signature `(input, weights, output)`.

    `output[r, c] = sum over the in-range taps (dr, dc) of input[r+dr, c+dc] *
    weights[(dr+1)*3 + dc+1]`, fused-multiply-added from 0 in row-major tap order, for
    `r = blockIdx.y * blockDim.y + threadIdx.y < height` and likewise `c` along x; any
    2-D block, e.g. (16, 16, 1). The same arithmetic as the kernel library's conv2d.
    """

    op: ClassVar[str] = "conv2d"
    dtypes: ClassVar[frozenset[str]] = frozenset({"f32"})
    param_names: ClassVar[frozenset[str]] = frozenset({"height", "width"})
    required_params: ClassVar[frozenset[str]] = frozenset({"height", "width"})

    def check(self, spec: KernelSpec) -> None:
        """Also bounds height and width to [1, 2^15]."""
        super().check(spec)
        check_range(spec, "height", 1, MAX_CONV_DIM)
        check_range(spec, "width", 1, MAX_CONV_DIM)

    def render(self, spec: KernelSpec) -> str:
        """Returns the kernel with its nine taps unrolled and predicated."""
        p = dict(spec.params)
        height, width = p["height"], p["width"]
        header = (
            f".visible .entry {self.entry_name(spec)}(\n"
            "    .param .u64 input,\n    .param .u64 weights,\n    .param .u64 output\n)\n"
        )
        body = [
            "{",
            ".reg .pred %p<16>;",
            ".reg .b32 %r<12>;",
            ".reg .b64 %rd<12>;",
            ".reg .f32 %f<4>;",
            "",
            "mov.u32 %r1, %ctaid.y;",
            "mov.u32 %r2, %ntid.y;",
            "mov.u32 %r3, %tid.y;",
            "mad.lo.u32 %r4, %r1, %r2, %r3;",  # row
            "mov.u32 %r5, %ctaid.x;",
            "mov.u32 %r6, %ntid.x;",
            "mov.u32 %r7, %tid.x;",
            "mad.lo.u32 %r8, %r5, %r6, %r7;",  # col
            f"setp.ge.u32 %p1, %r4, {height};",
            "@%p1 bra $L__exit;",
            f"setp.ge.u32 %p1, %r8, {width};",
            "@%p1 bra $L__exit;",
            "ld.param.u64 %rd1, [input];",
            "ld.param.u64 %rd2, [weights];",
            "ld.param.u64 %rd3, [output];",
            "cvta.to.global.u64 %rd4, %rd1;",
            "cvta.to.global.u64 %rd5, %rd2;",
            "cvta.to.global.u64 %rd6, %rd3;",
            f"mad.lo.u32 %r9, %r4, {width}, %r8;",
            "mul.wide.u32 %rd7, %r9, 4;",
            "add.s64 %rd8, %rd4, %rd7;",  # &input[row][col]
            # Which neighbours exist: up (row >= 1), down (row + 1 < height), left, right.
            "setp.ge.u32 %p2, %r4, 1;",
            f"setp.lt.u32 %p3, %r4, {height - 1};",
            "setp.ge.u32 %p4, %r8, 1;",
            f"setp.lt.u32 %p5, %r8, {width - 1};",
            "mov.f32 %f1, 0f00000000;",
        ]
        row_pred = {-1: "%p2", 0: None, 1: "%p3"}
        col_pred = {-1: "%p4", 0: None, 1: "%p5"}
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if (dr and height == 1) or (dc and width == 1):
                    continue  # that neighbour never exists
                tap = (dr + 1) * 3 + dc + 1
                needed = [pred for pred in (row_pred[dr], col_pred[dc]) if pred]
                guard = ""
                if len(needed) == 2:
                    body.append(f"and.pred %p6, {needed[0]}, {needed[1]};")
                    guard = "@%p6 "
                elif needed:
                    guard = f"@{needed[0]} "
                offset = 4 * (dr * width + dc)
                body += [
                    f"{guard}ld.global.f32 %f2, [%rd8+{offset}];",
                    f"{guard}ld.global.f32 %f3, [%rd5+{4 * tap}];",
                    f"{guard}fma.rn.f32 %f1, %f2, %f3, %f1;",
                ]
        body += [
            "add.s64 %rd9, %rd6, %rd7;",
            "st.global.f32 [%rd9], %f1;",
            "$L__exit:",
            "ret;",
            "}",
        ]
        return header + lines(*body)


def register_all() -> None:
    """Registers this module's emitters (called once by `emit`)."""
    register(ReduceSumEmitter())
    register(MatmulEmitter())
    register(Conv2dEmitter())
