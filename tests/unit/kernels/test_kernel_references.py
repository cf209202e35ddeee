"""Tests of the NumPy references against independent formulas, launch geometry included."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from tensorwasm_kernels import CATALOG

F32 = npt.NDArray[np.float32]
ExactFma = Callable[[np.float32, np.float32, np.float32], np.float32]
SENTINEL = np.float32(-12345.0)


def _random(rng: np.random.Generator, *shape: int) -> F32:
    return rng.standard_normal(shape).astype(np.float32)


def _sentinel(size: int) -> F32:
    return np.full(size, SENTINEL, dtype=np.float32)


def _blocks(count: int, per_block: int) -> int:
    return max(1, math.ceil(count / per_block))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20260101)


# --- vector_add ------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "block_x"), [(1, 32), (1000, 256), (1023, 128), (4099, 1024)])
def test_vector_add_full_grid(rng: np.random.Generator, n: int, block_x: int) -> None:
    a, b, c = _random(rng, n), _random(rng, n), _sentinel(n)
    CATALOG["vector_add"].run_reference(
        [a, b, c], [n], (_blocks(n, block_x), 1, 1), (block_x, 1, 1)
    )
    np.testing.assert_array_equal(c, a + b)


def test_vector_add_partial_grid_leaves_the_rest(rng: np.random.Generator) -> None:
    n = 1000
    a, b, c = _random(rng, n), _random(rng, n), _sentinel(n)
    CATALOG["vector_add"].run_reference([a, b, c], [n], (3, 1, 1), (100, 1, 1))
    np.testing.assert_array_equal(c[:300], a[:300] + b[:300])
    assert (c[300:] == SENTINEL).all()


def test_vector_add_threads_beyond_n_do_nothing(rng: np.random.Generator) -> None:
    a, b, c = _random(rng, 64), _random(rng, 64), _sentinel(64)
    CATALOG["vector_add"].run_reference([a, b, c], [37], (4, 1, 1), (32, 1, 1))
    np.testing.assert_array_equal(c[:37], a[:37] + b[:37])
    assert (c[37:] == SENTINEL).all()


def test_vector_add_y_and_z_repeat_the_same_work(rng: np.random.Generator) -> None:
    a, b, c = _random(rng, 500), _random(rng, 500), _sentinel(500)
    CATALOG["vector_add"].run_reference([a, b, c], [500], (2, 3, 2), (128, 2, 2))
    np.testing.assert_array_equal(c[:256], a[:256] + b[:256])
    assert (c[256:] == SENTINEL).all()


@pytest.mark.parametrize("n", [0, -5, 2**31 + 7])
def test_vector_add_nonpositive_n_touches_nothing(n: int) -> None:
    # 2**31 + 7 arrives as a u32 argv record; the kernel's `int n` sees it as negative.
    empty = np.zeros(0, dtype=np.float32)
    CATALOG["vector_add"].run_reference([empty, empty, empty], [n], (4, 1, 1), (256, 1, 1))


def test_vector_add_in_place_aliasing(rng: np.random.Generator) -> None:
    a, b = _random(rng, 77), _random(rng, 77)
    expected = a + b
    CATALOG["vector_add"].run_reference([a, b, a], [77], (1, 1, 1), (128, 1, 1))
    np.testing.assert_array_equal(a, expected)


def test_vector_add_keeps_ieee_specials() -> None:
    a = np.array([np.inf, -np.inf, np.nan, 3.4e38, 1e-45, -0.0], dtype=np.float32)
    b = np.array([1.0, -1.0, 1.0, 3.4e38, 1e-45, -0.0], dtype=np.float32)
    c = _sentinel(6)
    CATALOG["vector_add"].run_reference([a, b, c], [6], (1, 1, 1), (32, 1, 1))
    with np.errstate(over="ignore"):
        expected = a + b
    np.testing.assert_array_equal(c, expected)
    assert np.signbit(c[5])


# --- saxpy -----------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "block_x"), [(1, 1), (999, 256), (2048, 512)])
def test_saxpy_matches_formula(rng: np.random.Generator, n: int, block_x: int) -> None:
    x, y = _random(rng, n), _random(rng, n)
    alpha = 1.7
    expected = (np.float64(np.float32(alpha)) * x + y).astype(np.float32)
    CATALOG["saxpy"].run_reference([x, y], [alpha, n], (_blocks(n, block_x), 1, 1), (block_x, 1, 1))
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


def test_saxpy_is_bit_exact(rng: np.random.Generator, exact_fma: ExactFma) -> None:
    x, y = _random(rng, 200), _random(rng, 200)
    alpha = np.float32(0.3)
    expected = [exact_fma(alpha, xi, yi) for xi, yi in zip(x, y, strict=True)]
    CATALOG["saxpy"].run_reference([x, y], [alpha, 200], (1, 1, 1), (256, 1, 1))
    np.testing.assert_array_equal(y, np.array(expected, dtype=np.float32))


def test_saxpy_partial_grid(rng: np.random.Generator) -> None:
    x, y = _random(rng, 700), _random(rng, 700)
    before = y.copy()
    CATALOG["saxpy"].run_reference([x, y], [np.float32(-2.5), 700], (2, 1, 1), (96, 1, 1))
    np.testing.assert_allclose(y[:192], -2.5 * x[:192] + before[:192], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(y[192:], before[192:])


def test_saxpy_applies_once_whatever_the_y_z_slices(rng: np.random.Generator) -> None:
    x, y = _random(rng, 300), _random(rng, 300)
    once = y.copy()
    CATALOG["saxpy"].run_reference([x, once], [3.0, 300], (3, 1, 1), (128, 1, 1))
    CATALOG["saxpy"].run_reference([x, y], [3.0, 300], (3, 4, 2), (128, 2, 4))
    np.testing.assert_array_equal(y, once)


def test_saxpy_is_one_fused_multiply_add() -> None:
    # alpha * x + y rounds once: here the two-rounding answer is off by one ulp.
    x = np.array([float.fromhex("0x1.8ff3c2p+0")], dtype=np.float32)
    y = np.array([2.0**20], dtype=np.float32)
    alpha = np.float32(float.fromhex("0x1.0007d6p+0"))
    two_roundings = np.float32(np.float64(alpha) * np.float64(x[0]) + np.float64(y[0]))
    CATALOG["saxpy"].run_reference([x, y], [alpha, 1], (1, 1, 1), (1, 1, 1))
    assert y[0] != two_roundings
    assert abs(float(y[0]) - float(two_roundings)) == 2.0**-3  # one ulp at 2**20


# --- matmul ----------------------------------------------------------------------------


def _matmul(a: F32, b: F32, c: F32, m: int, n: int, k: int, grid: tuple[int, int, int]) -> None:
    CATALOG["matmul"].run_reference([a, b, c], [m, n, k], grid, (16, 16, 1))


@pytest.mark.parametrize(("m", "n", "k"), [(1, 1, 1), (16, 16, 16), (33, 17, 45), (50, 70, 3)])
def test_matmul_matches_numpy(rng: np.random.Generator, m: int, n: int, k: int) -> None:
    a, b, c = _random(rng, m, k), _random(rng, k, n), _sentinel(m * n)
    _matmul(a, b, c, m, n, k, (_blocks(n, 16), _blocks(m, 16), 1))
    np.testing.assert_allclose(c.reshape(m, n), a @ b, rtol=1e-5, atol=1e-5)


def test_matmul_partial_grid_computes_only_covered_tiles(rng: np.random.Generator) -> None:
    m, n, k = 40, 50, 20
    a, b, c = _random(rng, m, k), _random(rng, k, n), _sentinel(m * n)
    _matmul(a, b, c, m, n, k, (2, 1, 1))  # rows [0, 16), columns [0, 32)
    out = c.reshape(m, n)
    np.testing.assert_allclose(out[:16, :32], a[:16] @ b[:, :32], rtol=1e-5, atol=1e-5)
    assert (out[16:, :] == SENTINEL).all()
    assert (out[:, 32:] == SENTINEL).all()


def test_matmul_zero_depth_writes_zeros() -> None:
    c = _sentinel(6)
    empty = np.zeros(0, dtype=np.float32)
    _matmul(empty, empty, c, 2, 3, 0, (1, 1, 1))
    np.testing.assert_array_equal(c, np.zeros(6, dtype=np.float32))


@pytest.mark.parametrize("block", [(16, 16, 2), (32, 8, 1), (256, 1, 1)])
def test_matmul_other_block_shapes_do_nothing(
    rng: np.random.Generator, block: tuple[int, int, int]
) -> None:
    a, b, c = _random(rng, 16, 16), _random(rng, 16, 16), _sentinel(256)
    CATALOG["matmul"].run_reference([a, b, c], [16, 16, 16], (1, 1, 1), block)
    assert (c == SENTINEL).all()
    assert CATALOG["matmul"].footprint([16, 16, 16], (1, 1, 1), block) == {"a": 0, "b": 0, "c": 0}


# --- conv2d ----------------------------------------------------------------------------


def _conv2d_direct(image: F32, weights: F32) -> npt.NDArray[np.float64]:
    """Same-padded 3x3 cross-correlation written with slicing over a zero-padded copy."""
    height, width = image.shape
    padded = np.zeros((height + 2, width + 2), dtype=np.float64)
    padded[1:-1, 1:-1] = image
    out = np.zeros((height, width), dtype=np.float64)
    for i in range(3):
        for j in range(3):
            out += padded[i : i + height, j : j + width] * float(weights[i, j])
    return out


@pytest.mark.parametrize(
    ("height", "width", "block"),
    [(1, 1, (16, 16, 1)), (2, 7, (8, 8, 1)), (31, 45, (16, 16, 1)), (64, 33, (32, 4, 1))],
)
def test_conv2d_matches_direct(
    rng: np.random.Generator, height: int, width: int, block: tuple[int, int, int]
) -> None:
    image, weights = _random(rng, height, width), _random(rng, 3, 3)
    out = _sentinel(height * width)
    grid = (_blocks(width, block[0]), _blocks(height, block[1]), 1)
    CATALOG["conv2d"].run_reference([image, weights, out], [height, width], grid, block)
    expected = _conv2d_direct(image, weights)
    np.testing.assert_allclose(out.reshape(height, width), expected, rtol=1e-5, atol=1e-5)


def test_conv2d_partial_grid_reads_the_halo_but_writes_only_covered(
    rng: np.random.Generator,
) -> None:
    height, width = 20, 30
    image, weights = _random(rng, height, width), _random(rng, 3, 3)
    out = _sentinel(height * width)
    CATALOG["conv2d"].run_reference([image, weights, out], [height, width], (2, 1, 2), (8, 8, 1))
    result = out.reshape(height, width)
    expected = _conv2d_direct(image, weights)
    np.testing.assert_allclose(result[:8, :16], expected[:8, :16], rtol=1e-5, atol=1e-5)
    assert (result[8:, :] == SENTINEL).all()
    assert (result[:, 16:] == SENTINEL).all()


def test_conv2d_skips_out_of_image_taps_instead_of_multiplying_zero() -> None:
    # An infinite corner weight: 0 * inf would be NaN, but the kernel never reads outside.
    image = np.ones((1, 1), dtype=np.float32)
    weights = np.zeros((3, 3), dtype=np.float32)
    weights[1, 1] = 2.0
    weights[0, 0] = np.inf
    out = _sentinel(1)
    CATALOG["conv2d"].run_reference([image, weights, out], [1, 1], (1, 1, 1), (1, 1, 1))
    assert out[0] == 2.0


def test_conv2d_is_bit_exact_in_the_kernel_order(exact_fma: ExactFma) -> None:
    # The kernel folds the in-image taps row by row with one rounding each; so does the
    # reference, bit for bit (checked on every pixel: corners, edges and the inside).
    rng = np.random.default_rng(7)
    height, width = 4, 5
    image, weights = _random(rng, height, width), _random(rng, 3, 3)
    out = _sentinel(height * width)
    CATALOG["conv2d"].run_reference([image, weights, out], [height, width], (1, 1, 1), (8, 8, 1))
    for r in range(height):
        for c in range(width):
            acc = np.float32(0.0)
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if 0 <= r + dr < height and 0 <= c + dc < width:
                        acc = exact_fma(image[r + dr, c + dc], weights[dr + 1, dc + 1], acc)
            assert out[r * width + c] == acc, (r, c)


# --- reduce_sum ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "grid_x", "block_x"), [(1, 1, 32), (1000, 4, 256), (100_003, 7, 96), (5000, 1, 1)]
)
def test_reduce_sum_any_grid_sums_everything(
    rng: np.random.Generator, n: int, grid_x: int, block_x: int
) -> None:
    data = _random(rng, n)
    out = np.zeros(1, dtype=np.float32)
    CATALOG["reduce_sum"].run_reference([data, out], [n], (grid_x, 1, 1), (block_x, 1, 1))
    expected = np.sum(data)
    assert out[0] == pytest.approx(float(expected), rel=1e-4, abs=1e-3)


def test_reduce_sum_adds_to_what_output_holds(rng: np.random.Generator) -> None:
    data = _random(rng, 333)
    out = np.array([100.0], dtype=np.float32)
    CATALOG["reduce_sum"].run_reference([data, out], [333], (2, 3, 1), (64, 2, 1))
    assert out[0] == pytest.approx(100.0 + float(np.sum(data, dtype=np.float64)), rel=1e-6)


def test_reduce_sum_only_first_n_and_empty_input(rng: np.random.Generator) -> None:
    data = _random(rng, 50)
    out = np.zeros(1, dtype=np.float32)
    CATALOG["reduce_sum"].run_reference([data, out], [20], (1, 1, 1), (32, 1, 1))
    assert out[0] == pytest.approx(float(np.sum(data[:20], dtype=np.float64)), rel=1e-6)
    empty_out = np.array([-0.0], dtype=np.float32)
    CATALOG["reduce_sum"].run_reference(
        [np.zeros(0, np.float32), empty_out], [0], (1, 1, 1), (1, 1, 1)
    )
    assert empty_out[0] == 0.0
    assert not np.signbit(empty_out[0])  # -0.0 + 0.0, as the atomicAdd of an empty block


# --- footprints --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "scalars", "grid", "block", "expected"),
    [
        ("vector_add", [1000], (3, 1, 1), (256, 1, 1), {"a": 768, "b": 768, "c": 768}),
        ("vector_add", [100], (3, 1, 1), (256, 1, 1), {"a": 100, "b": 100, "c": 100}),
        ("saxpy", [1.0, 10], (1, 1, 1), (4, 1, 1), {"x": 4, "y": 4}),
        ("matmul", [40, 50, 20], (2, 1, 1), (16, 16, 1), {"a": 320, "b": 982, "c": 782}),
        ("matmul", [40, 50, 20], (4, 3, 1), (16, 16, 1), {"a": 800, "b": 1000, "c": 2000}),
        ("conv2d", [20, 30], (2, 1, 1), (8, 8, 1), {"input": 257, "weights": 9, "output": 226}),
        ("conv2d", [20, 30], (4, 3, 1), (8, 8, 1), {"input": 600, "weights": 9, "output": 600}),
        ("conv2d", [1, 1], (1, 1, 1), (1, 1, 1), {"input": 1, "weights": 5, "output": 1}),
        ("conv2d", [1, 5], (1, 1, 1), (8, 1, 1), {"input": 5, "weights": 6, "output": 5}),
        ("conv2d", [0, 5], (1, 1, 1), (8, 1, 1), {"input": 0, "weights": 0, "output": 0}),
        ("reduce_sum", [77], (1, 1, 1), (32, 1, 1), {"input": 77, "output": 1}),
        ("reduce_sum", [-3], (1, 1, 1), (32, 1, 1), {"input": 0, "output": 1}),
    ],
)
def test_footprint(
    name: str,
    scalars: list[float],
    grid: tuple[int, int, int],
    block: tuple[int, int, int],
    expected: dict[str, int],
) -> None:
    assert CATALOG[name].footprint(scalars, grid, block) == expected


def test_exact_footprint_is_enough(rng: np.random.Generator) -> None:
    # Buffers cut to the footprint run; the covered results equal a full-size run.
    m, n, k = 40, 50, 20
    a, b = _random(rng, m * k), _random(rng, k * n)
    full = _sentinel(m * n)
    _matmul(a, b, full, m, n, k, (2, 1, 1))
    need = CATALOG["matmul"].footprint([m, n, k], (2, 1, 1), (16, 16, 1))
    cut = _sentinel(need["c"])
    _matmul(a[: need["a"]].copy(), b[: need["b"]].copy(), cut, m, n, k, (2, 1, 1))
    np.testing.assert_array_equal(cut, full[: need["c"]])
