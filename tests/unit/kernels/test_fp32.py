"""Tests of the exact f32 fused multiply-add against a rational-arithmetic oracle."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from tensorwasm_kernels import fma_f32

ExactFma = Callable[[np.float32, np.float32, np.float32], np.float32]

# (a, b, c) where rounding a*b + c to f64 and then to f32 is one ulp off: f64 rounds the
# exact value onto an f32 midpoint, and the second rounding then goes to even.
DOUBLE_ROUNDING_TRAPS = [
    ("0x1.0007d6p+0", "0x1.8ff3c2p+0", "0x1p+20"),
    ("-0x1.0007d6p+0", "0x1.8ff3c2p+0", "-0x1p+20"),
    ("0x1.000c9ap+0", "0x1.cfe92ap+0", "0x1p+20"),
    ("-0x1.000c9ap+0", "0x1.cfe92ap+0", "-0x1p+20"),
]


def _f32(hex_text: str) -> np.float32:
    return np.float32(float.fromhex(hex_text))


@pytest.mark.parametrize(("a", "b", "c"), DOUBLE_ROUNDING_TRAPS)
def test_double_rounding_traps(a: str, b: str, c: str, exact_fma: ExactFma) -> None:
    x, y, z = _f32(a), _f32(b), _f32(c)
    two_roundings = np.float32(np.float64(x) * np.float64(y) + np.float64(z))
    expected = exact_fma(x, y, z)
    assert two_roundings != expected
    assert fma_f32(x, y, z) == expected


def test_random_values_match_the_oracle(exact_fma: ExactFma) -> None:
    rng = np.random.default_rng(3)
    size = 3000
    mantissas = rng.uniform(1.0, 2.0, size=(3, size))
    exponents = rng.integers(-40, 40, size=(3, size))
    signs = rng.choice([-1.0, 1.0], size=(3, size))
    a, b, c = (signs * np.ldexp(mantissas, exponents)).astype(np.float32)
    result = fma_f32(a, b, c)
    expected = np.array([exact_fma(x, y, z) for x, y, z in zip(a, b, c, strict=True)])
    np.testing.assert_array_equal(result, expected)


def test_subnormals_and_cancellation(exact_fma: ExactFma) -> None:
    tiny = np.float32(1e-45)
    cases = [
        (tiny, np.float32(0.5), np.float32(0.0)),
        (np.float32(1e-30), np.float32(1e-10), np.float32(-1e-40)),
        (np.float32(1.0 + 2.0**-23), np.float32(1.0 - 2.0**-23), np.float32(-1.0)),
        (np.float32(3.0), np.float32(1.0 / 3.0), np.float32(-1.0)),
    ]
    for a, b, c in cases:
        assert fma_f32(a, b, c) == exact_fma(a, b, c), (a, b, c)


def test_specials_and_broadcasting() -> None:
    result = fma_f32(np.float32(2.0), np.array([np.inf, 1.0, np.nan, 3e38], np.float32), 1.0)
    assert result.dtype == np.float32
    assert result.shape == (4,)
    assert result[0] == np.inf
    assert result[1] == 3.0
    assert np.isnan(result[2])
    assert result[3] == np.inf  # overflows f32, with no warning
    assert fma_f32(np.float32(0.0), np.float32(-1.0), np.float32(0.0)) == 0.0
    assert not np.signbit(fma_f32(np.float32(0.0), np.float32(-1.0), np.float32(0.0)))
    assert np.signbit(fma_f32(np.float32(0.0), np.float32(-1.0), np.float32(-0.0)))
