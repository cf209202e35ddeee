"""Launch cases of every PTX we ship or emit, and of the user-style kernels, each with its
expectation computed independently in NumPy, and a runner over any dispatcher backend.

The same cases check the cpu backend's PTX executor (tests/unit/dispatcher/backends),
compare it with a GPU (`python -m tests.ptx_kernels.differential`, tests/gpu) and feed
the `ptx_cpu` benchmark.

Float budgets: `Ulps(n)` bounds the distance in units in the last place; sums whose order
differs from the reference's get `Close`, relative to the magnitude of the terms.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from tensorwasm_common.gpu_abi import ArgTag, ScalarArg
from tensorwasm_dispatcher.backends.base import Backend, BufferArg
from tensorwasm_jit.ptx import emit
from tensorwasm_kernels import CATALOG
from tensorwasm_kernels.fp32 import fma_f32

from tests.emitted_cases import all_cases as emitted_cases
from tests.ptx_kernels import ptx_text

Array = npt.NDArray[np.generic]


@dataclass(frozen=True)
class Exact:
    """Bit for bit."""


@dataclass(frozen=True)
class Ulps:
    """Within `ulps` units in the last place (NaN matches NaN)."""

    ulps: int


@dataclass(frozen=True)
class Close:
    """np.allclose with these tolerances (sums in another order than the reference's)."""

    rtol: float
    atol: float


@dataclass(frozen=True)
class Unordered:
    """The same values in any order (slots handed out by atomics)."""


Compare = Exact | Ulps | Close | Unordered


@dataclass(frozen=True)
class PtxCase:
    """One launch: the PTX, its arguments (an int is a pointer to that array), the
    geometry and what the written arrays must hold afterwards."""

    name: str
    ptx: bytes = field(repr=False)
    entry: str
    arrays: tuple[Array, ...] = field(repr=False)
    args: tuple[int | ScalarArg, ...]
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    expected: dict[int, Array] = field(repr=False)
    compare: dict[int, Compare] = field(default_factory=dict)
    shared_bytes: int = 0


def i32(value: int) -> ScalarArg:
    return ScalarArg(ArgTag.I32, value)


def i64(value: int) -> ScalarArg:
    return ScalarArg(ArgTag.I64, value)


def f32(value: float) -> ScalarArg:
    return ScalarArg(ArgTag.F32, struct.unpack("<I", struct.pack("<f", value))[0])


def ulp_distance(got: Array, expected: Array) -> npt.NDArray[np.int64]:
    """|got - expected| in units in the last place, elementwise (0 where both are NaN)."""
    bits = {2: np.int16, 4: np.int32, 8: np.int64}[got.dtype.itemsize]
    width = got.dtype.itemsize * 8

    def ordered(values: Array) -> npt.NDArray[np.int64]:
        raw = values.view(bits).astype(np.int64)
        if width == 64:  # two's complement of the magnitude, without overflowing int64
            return np.where(raw < 0, -(raw & np.int64(0x7FFFFFFFFFFFFFFF)), raw)
        return np.where(raw < 0, -(raw & ((1 << (width - 1)) - 1)), raw)

    both_nan = np.isnan(got) & np.isnan(expected)
    distance = np.abs(ordered(got) - ordered(expected))
    return np.where(both_nan, 0, distance)


def check(case: PtxCase, outputs: Sequence[Array]) -> None:
    """Asserts every expected array came back within its budget."""
    for index, expected in case.expected.items():
        got = outputs[index]
        rule = case.compare.get(index, Exact())
        where = f"{case.name} output {index}"
        if isinstance(rule, Exact):
            np.testing.assert_array_equal(got, expected, err_msg=where, strict=True)
        elif isinstance(rule, Ulps):
            distance = ulp_distance(got, expected)
            assert int(distance.max(initial=0)) <= rule.ulps, (
                f"{where}: {int(distance.max())} ulps at {int(distance.argmax())}, "
                f"budget {rule.ulps}"
            )
        elif isinstance(rule, Close):
            np.testing.assert_allclose(got, expected, rtol=rule.rtol, atol=rule.atol, err_msg=where)
        else:
            np.testing.assert_array_equal(np.sort(got), np.sort(expected), err_msg=where)


def largest_difference(case: PtxCase, index: int, got: Array, other: Array) -> float:
    """The largest difference between two runs' output `index`, in that output's unit
    (ulps for floats, absolute for integers, 0/1 for unordered outputs)."""
    if isinstance(case.compare.get(index), Unordered):
        return float(not np.array_equal(np.sort(got), np.sort(other)))
    if got.dtype.kind == "f":
        return float(ulp_distance(got, other).max(initial=0))
    return float(np.abs(got.astype(np.int64) - other.astype(np.int64)).max(initial=0))


def run_case(backend: Backend, case: PtxCase) -> list[Array]:
    """Loads, stages, launches once and reads back every array, on any backend."""
    kernel = backend.load(case.ptx, case.entry)
    stream = backend.open_stream()
    buffers = [
        backend.stage(array.tobytes(), stream, guest_offset=(index + 1) << 20)
        for index, array in enumerate(case.arrays)
    ]
    try:
        args = [
            BufferArg(buffers[arg], 0, case.arrays[arg].nbytes, guest_offset=(arg + 1) << 20)
            if isinstance(arg, int)
            else arg
            for arg in case.args
        ]
        backend.launch(
            stream,
            kernel,
            grid=case.grid,
            block=case.block,
            shared_mem_bytes=case.shared_bytes,
            args=args,
        )
        backend.finish(stream, None)  # a backend that queues launches: wait for it
        return [
            np.frombuffer(backend.read(buffer, stream), array.dtype).copy()
            for buffer, array in zip(buffers, case.arrays, strict=True)
        ]
    finally:
        for buffer in buffers:
            backend.free(buffer, stream)
        backend.close_stream(stream)
        backend.unload(kernel)


# --- user-style kernels ---------------------------------------------------------------------


def _user(name: str) -> bytes:
    return ptx_text(name).encode("utf-8")


def _saxpy() -> PtxCase:
    rng = np.random.default_rng(11)
    n = 10_007
    x = rng.standard_normal(n).astype(np.float32)
    y = rng.standard_normal(n).astype(np.float32)
    return PtxCase(
        "user-grid_stride_saxpy",
        _user("grid_stride_saxpy"),
        "grid_stride_saxpy",
        (x, y),
        (f32(1.75), 0, 1, i64(n)),
        (7, 1, 1),
        (128, 1, 1),
        {1: fma_f32(np.float32(1.75), x, y)},
    )


def _block_reduce() -> PtxCase:
    rng = np.random.default_rng(12)
    n, blocks, threads = 50_000, 12, 256
    values = rng.integers(-(2**20), 2**20, n).astype(np.int32)
    lanes = np.arange(n) % (blocks * threads)
    block_of = lanes // threads
    sums = np.bincount(block_of, weights=values, minlength=blocks).astype(np.int64)
    total = np.array([int(sums.sum()) % 2**64], np.uint64)
    return PtxCase(
        "user-block_reduce",
        _user("block_reduce"),
        "block_reduce",
        (values, np.zeros(blocks, np.int32), np.zeros(1, np.uint64)),
        (0, 1, 2, i32(n)),
        (blocks, 1, 1),
        (threads, 1, 1),
        {1: sums.astype(np.int32), 2: total},
        shared_bytes=threads * 4,
    )


def _warp_reduce() -> PtxCase:
    rng = np.random.default_rng(13)
    n, threads, blocks = 1000, 128, 8
    values = rng.standard_normal(n).astype(np.float32)
    padded = np.zeros(blocks * threads, np.float32)
    padded[:n] = values
    warps = padded.reshape(-1, 32)
    v = warps.copy()
    for offset in (16, 8, 4, 2, 1):  # __shfl_down_sync: lanes past the end keep their own
        shifted = np.concatenate([v[:, offset:], v[:, 32 - offset :]], axis=1)
        v = (v + shifted).astype(np.float32)
    sums = v[:, 0]
    weights = (1 << np.arange(32, dtype=np.uint64)).astype(np.uint64)
    ballot = ((warps > 0).astype(np.uint64) * weights).sum(axis=1).astype(np.uint32)
    flags = (warps > 1).any(axis=1).astype(np.uint32) | ((warps > -3).all(axis=1) << 1)
    votes = np.stack([ballot, flags.astype(np.uint32)], axis=1).ravel()
    count = blocks * threads // 32
    return PtxCase(
        "user-warp_reduce",
        _user("warp_reduce"),
        "warp_reduce",
        (values, np.zeros(count, np.float32), np.zeros(2 * count, np.uint32)),
        (0, 1, 2, i32(n)),
        (blocks, 1, 1),
        (threads, 1, 1),
        {1: sums, 2: votes},
    )


def _histogram() -> tuple[PtxCase, PtxCase]:
    rng = np.random.default_rng(14)
    n = 20_000
    data = (rng.standard_normal(n) * 30 + 128).clip(0, 255).astype(np.uint8)
    bins = np.bincount(data, minlength=256).astype(np.uint32)
    histogram = PtxCase(
        "user-histogram",
        _user("histogram"),
        "histogram",
        (data, np.zeros(256, np.uint32)),
        (0, 1, i32(n)),
        (6, 1, 1),
        (192, 1, 1),
        {1: bins},
    )
    values = rng.integers(-100, 100, 3000).astype(np.int32)
    positive = values[values > 0]
    out = np.zeros(values.size, np.int32)
    out[: positive.size] = positive
    compact = PtxCase(
        "user-compact_positive",
        _user("histogram"),
        "compact_positive",
        (values, np.zeros(values.size, np.int32), np.zeros(1, np.uint32)),
        (0, 1, 2, i32(values.size)),
        (12, 1, 1),
        (256, 1, 1),
        {1: out, 2: np.array([positive.size], np.uint32)},
        compare={1: Unordered()},
    )
    return histogram, compact


def _half_ops() -> PtxCase:
    rng = np.random.default_rng(15)
    n = 777
    x = rng.uniform(-2, 2, n).astype(np.float16)
    y = rng.uniform(-2, 2, n).astype(np.float16)
    alpha = np.float16(0.7)
    fused = (alpha.astype(np.float64) * x + y).astype(np.float16)  # rounded once
    value = ((fused * x).astype(np.float16) + y).astype(np.float16)
    out = np.maximum(value, np.float16(0))
    return PtxCase(
        "user-half_ops",
        _user("half_ops"),
        "half_ops",
        (x, y, np.zeros(n, np.float16)),
        (0, 1, 2, f32(0.7), i32(n)),
        (4, 1, 1),
        (256, 1, 1),
        {2: out},
    )


def _brev32(values: npt.NDArray[np.uint32]) -> npt.NDArray[np.int64]:
    result = np.zeros(values.shape, np.uint64)
    wide = values.astype(np.uint64)
    for bit in range(32):
        result |= ((wide >> np.uint64(bit)) & np.uint64(1)) << np.uint64(31 - bit)
    return result.astype(np.int64)


def _int_math() -> PtxCase:
    rng = np.random.default_rng(16)
    n = 2048
    a = rng.integers(-(2**31), 2**31, n).astype(np.int64)
    b = rng.integers(-(2**31), 2**31, n).astype(np.int64)
    a[:8] = [0, 1, -1, 2**31 - 1, -(2**31), 7, -7, 13]
    b[:8] = [1, -1, 3, -5, 2**31 - 1, 2, -3, 1]
    b[b == 0] = 1

    def trunc_div(x: npt.NDArray[np.int64], y: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        q = np.abs(x) // np.abs(y)
        return np.where((x < 0) != (y < 0), -q, q)

    def wrap(x: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return ((x + 2**31) % 2**32) - 2**31

    ua, ub = a % 2**32, b % 2**32
    r = wrap(trunc_div(a, b) + (a - trunc_div(a, b) * b))
    r ^= wrap(trunc_div(a, np.int64(7)) + (ua % 13))
    bit_length = np.where(ub == 0, 0, np.floor(np.log2(np.maximum(ub, 1))).astype(np.int64) + 1)
    popc = np.bitwise_count(ua.astype(np.uint32)).astype(np.int64)
    r = wrap(r + popc + (32 - bit_length) + _brev32(ua.astype(np.uint32)))
    r = wrap(r + ((a * b) >> 32) + wrap((ua * ub) >> 32))
    r = wrap(r + wrap(np.minimum(a, b) * np.maximum(a, b)) + wrap(np.abs(a)) + (a >> 3) + (ub >> 5))
    w = a * b
    r = wrap(r + wrap(w >> 17) + wrap(trunc_div(w, np.int64(1000003))))
    return PtxCase(
        "user-int_math",
        _user("int_math"),
        "int_math",
        (a.astype(np.int32), b.astype(np.int32), np.zeros(n, np.int32)),
        (0, 1, 2, i32(n)),
        (8, 1, 1),
        (256, 1, 1),
        {2: r.astype(np.int32)},
    )


def _float_math() -> PtxCase:
    rng = np.random.default_rng(17)
    n = 1500
    v = rng.uniform(-3, 3, n).astype(np.float32)
    v[:4] = [0.0, -0.0, 0.5, -2.5]
    one = np.float32(1)
    square = fma_f32(v, v, one)  # 1 + v*v, contracted
    with np.errstate(all="ignore"):
        columns = [
            np.sqrt(np.abs(v)),
            np.exp(v),
            np.sin(v) + np.cos(v),
            np.floor(v) + np.rint(v * np.float32(3)) + np.rint(v * np.float32(100)),
            np.fmin(v, np.float32(0.5)) / square,
            one / np.sqrt(square),
        ]
    out = np.stack([c.astype(np.float32) for c in columns], axis=1).ravel()
    d = v.astype(np.float64)
    dout = np.sqrt(d * d + 1.0) / 3.0 + np.trunc(v * np.float32(1000)).astype(np.float64)
    out_rules = np.zeros(6 * n, np.float32)
    del out_rules
    return PtxCase(
        "user-float_math",
        _user("float_math"),
        "float_math",
        (v, np.zeros(6 * n, np.float32), np.zeros(n, np.float64)),
        (0, 1, 2, i32(n)),
        (6, 1, 1),
        (256, 1, 1),
        {1: out, 2: dout},
        compare={1: Close(3e-6, 2e-6), 2: Ulps(2)},
    )


def _local_array() -> PtxCase:
    rng = np.random.default_rng(18)
    n = 999
    values = rng.integers(-1000, 1000, n).astype(np.int32)
    table = np.stack([np.roll(values, -k) * (k + 1) for k in range(8)], axis=1)
    index = values & 7
    rows = np.arange(n)
    out = (table[rows, index] + table[rows, (index + 3) & 7]).astype(np.int32)
    return PtxCase(
        "user-local_array",
        _user("local_array"),
        "local_array",
        (values, np.zeros(n, np.int32)),
        (0, 1, i32(n)),
        (4, 1, 1),
        (256, 1, 1),
        {1: out},
    )


def _vector_types() -> PtxCase:
    rng = np.random.default_rng(19)
    n = 300
    values = rng.standard_normal((n, 4)).astype(np.float32)
    pairs = rng.integers(-1000, 1000, (n, 2)).astype(np.int32)
    out = np.stack(
        [values[:, 3] * np.float32(2), values[:, 2] + np.float32(1), values[:, 1], -values[:, 0]],
        axis=1,
    )
    new_pairs = np.stack([pairs[:, 1] - pairs[:, 0], pairs[:, 0] * 3], axis=1).astype(np.int32)
    return PtxCase("user-vector_types", _user("vector_types"), "vector_types",
                   (values.ravel(), np.zeros(4 * n, np.float32), pairs.ravel()),
                   (0, 1, 2, i32(n)), (3, 1, 1), (128, 1, 1),
                   {1: out.ravel(), 2: new_pairs.ravel()})  # fmt: skip


def _warp_scan() -> PtxCase:
    rng = np.random.default_rng(20)
    n, threads, blocks = 1000, 128, 8
    values = rng.integers(-(2**20), 2**20, n).astype(np.int32)
    values[:3] = [0, -1, 2**20]
    padded = np.zeros(threads * blocks, np.int64)
    padded[:n] = values
    scan = np.cumsum(padded.reshape(-1, 32), axis=1).ravel()[:n]
    scan = (((scan + 2**31) % 2**32) - 2**31).astype(np.int32)
    maximum = np.array([max(-1e30, float((values.astype(np.float32) * np.float32(0.25)).max()))],
                       np.float32)  # fmt: skip
    stats = np.array([values.min(), values.max(), n % 1001, 7], np.int32)
    x = values.view(np.uint32).astype(np.uint64)
    permuted = (x & 0xFF) | (0x04 << 8) | (((x >> 8) & 0xFF) << 16) | (0x03 << 24)
    clz64 = np.where(x == 0, 64, 64 - np.floor(np.log2(np.maximum(x, 1))).astype(np.int64) - 1)
    mixed = (permuted ^ ((x >> 8) & 0xFF) ^ (clz64.astype(np.uint64) << 24)) & 0xFFFFFFFF
    start_stats = np.array([2**31 - 1, -(2**31), 0, 0], np.int32)
    return PtxCase("user-warp_scan", _user("warp_scan"), "warp_scan",
                   (values, np.zeros(n, np.int32), np.array([-1e30], np.float32), start_stats,
                    np.zeros(n, np.uint32)),
                   (0, 1, 2, 3, 4, i32(n)), (blocks, 1, 1), (threads, 1, 1),
                   {1: scan, 2: maximum, 3: stats, 4: mixed.astype(np.uint32)})  # fmt: skip


def _libm() -> PtxCase:
    rng = np.random.default_rng(22)
    n = 1000
    x = rng.uniform(-50, 50, n).astype(np.float32)
    x[:4] = [1e4, -3e5, 0.5, 100.0]  # sinf/cosf's large-argument path
    v = x.astype(np.float64)
    erf = np.array([math.erf(value) for value in v])
    weights = np.array([0.5, -1.25, 2.0, 0.125])[np.arange(n) & 3]
    expected = (np.sin(v) + np.cos(v) + np.log(np.abs(v) + 1) + np.abs(v) ** 1.5 + np.tanh(v)
                + erf + np.arctan2(v, 2) + np.cbrt(v) + weights)  # fmt: skip
    # Each libm function is within a few f32 ulps of the exact value; so is their sum.
    return PtxCase("user-libm", _user("libm"), "libm", (x, np.zeros(n, np.float32)),
                   (0, 1, i32(n)), (4, 1, 1), (256, 1, 1), {1: expected.astype(np.float32)},
                   compare={1: Close(2e-6, 1e-5)})  # fmt: skip


def _block_votes() -> PtxCase:
    rng = np.random.default_rng(23)
    n, threads, blocks = 1000, 128, 8
    x = rng.integers(-1000, 1000, n).astype(np.int32)
    x[:2] = [950, -950]
    v = np.zeros(threads * blocks, np.int64)
    v[:n] = x
    per_block = v.reshape(blocks, threads)
    count = (per_block > 0).sum(axis=1)
    every = (per_block > -900).all(axis=1)
    some = (per_block > 900).any(axis=1)
    block_word = np.repeat(count + 1000 * every + 100000 * some, threads)
    warps = v.reshape(-1, 32)
    total = np.repeat(warps.sum(axis=1) % 2**32, 32)
    extremes = np.repeat(warps.min(axis=1) * 3 + warps.max(axis=1), 32)
    xor = np.repeat(np.bitwise_xor.reduce(warps % 2**32, axis=1), 32)
    words = np.stack([block_word, total, extremes, xor], axis=1)[:n]
    out = (((words + 2**31) % 2**32) - 2**31).astype(np.int32).ravel()
    halves = rng.uniform(-4, 4, 2 * n).astype(np.float16)
    half = (halves * np.float16(0.5)).astype(np.float16)
    added = (halves + half).astype(np.float16)
    fused = (halves.astype(np.float64) * halves + added).astype(np.float16)  # rounded once
    return PtxCase("user-block_votes", _user("block_votes"), "block_votes",
                   (x, np.zeros(4 * n, np.int32), halves, np.zeros(2 * n, np.float16)),
                   (0, 1, 2, 3, i32(n)), (blocks, 1, 1), (threads, 1, 1),
                   {1: out, 3: fused})  # fmt: skip


def user_cases() -> list[PtxCase]:
    """A case per user-style kernel entry."""
    return [
        _saxpy(),
        _block_reduce(),
        _warp_reduce(),
        *_histogram(),
        _half_ops(),
        _int_math(),
        _float_math(),
        _local_array(),
        _vector_types(),
        _warp_scan(),
        _libm(),
        _block_votes(),
    ]


# --- the kernel library and the jit cache ---------------------------------------------------


def library_cases() -> list[PtxCase]:
    """The kernel library's canonical PTX against its NumPy references."""
    rng = np.random.default_rng(21)
    cases = []
    shapes: dict[
        str,
        tuple[
            tuple[Array, ...], tuple[int | float, ...], tuple[int, int, int], tuple[int, int, int]
        ],
    ] = {
        "vector_add": (
            (rng.standard_normal(1000), rng.standard_normal(1000), np.zeros(1000)),
            (1000,),
            (4, 1, 1),
            (256, 1, 1),
        ),
        "saxpy": (
            (rng.standard_normal(777), rng.standard_normal(777)),
            (1.5, 777),
            (4, 1, 1),
            (256, 1, 1),
        ),
        "matmul": (
            (rng.standard_normal(20 * 12), rng.standard_normal(12 * 30), np.zeros(600)),
            (20, 30, 12),
            (2, 2, 1),
            (16, 16, 1),
        ),
        "conv2d": (
            (rng.standard_normal(33 * 47), rng.standard_normal(9), np.zeros(33 * 47)),
            (33, 47),
            (3, 3, 1),
            (16, 16, 1),
        ),
        "reduce_sum": ((rng.standard_normal(5000), np.zeros(1)), (5000,), (8, 1, 1), (256, 1, 1)),
    }
    budgets: dict[str, Compare] = {
        "matmul": Close(1e-5, 1e-5),
        "conv2d": Close(1e-5, 1e-5),
        "reduce_sum": Close(1e-5, 1e-3),
    }
    for name, (buffers, scalars, grid, block) in shapes.items():
        spec = CATALOG[name]
        arrays = tuple(np.asarray(b, np.float32) for b in buffers)
        expected = [a.copy() for a in arrays]
        spec.run_reference(expected, list(scalars), grid, block)
        pointers = iter(range(len(arrays)))
        values = iter(scalars)
        args: list[int | ScalarArg] = []
        for param in spec.params:
            if param.kind.is_pointer:
                args.append(next(pointers))
            elif param.kind.name == "F32":
                args.append(f32(float(next(values))))
            else:
                args.append(i32(int(next(values))))
        written = {
            index: expected[index]
            for index, param in enumerate(spec.pointer_params)
            if param.kind.is_written
        }
        compare = dict.fromkeys(written, budgets.get(name, Exact()))
        cases.append(
            PtxCase(
                f"library-{name}",
                spec.ptx_text().encode(),
                spec.entry,
                arrays,
                tuple(args),
                grid,
                block,
                written,
                compare,
            )
        )
    return cases


def emitted() -> list[PtxCase]:
    """Every jit-emitted kernel (all ops, dtypes, tile sizes) of tests.emitted_cases."""
    cases = []
    for case in emitted_cases():
        kernel = emit(case.spec)
        rule: Compare = Close(case.rtol, case.atol) if case.rtol or case.atol else Exact()
        cases.append(
            PtxCase(
                f"emitted-{case.name}",
                kernel.ptx.encode(),
                kernel.entry,
                case.arrays,
                (*range(len(case.arrays)), *case.scalars),
                case.grid,
                case.block,
                case.expected,
                dict.fromkeys(case.expected, rule),
            )
        )
    return cases


def all_cases() -> list[PtxCase]:
    """Every case: user-style, library, emitted."""
    return user_cases() + library_cases() + emitted()


CaseFactory = Callable[[], list[PtxCase]]
