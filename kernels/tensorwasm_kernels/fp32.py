"""Bit-exact f32 arithmetic NumPy lacks: a fused multiply-add rounded once (`fma.rn.f32`)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tensorwasm_kernels.params import F32Array


def fma_f32(a: npt.ArrayLike, b: npt.ArrayLike, c: npt.ArrayLike) -> F32Array:
    """Returns `a * b + c` rounded once to f32 (round to nearest even), elementwise.

    The product of two f32 values is exact in f64, and the f64 sum is made exact with
    Knuth's TwoSum; rounding that sum to odd in f64 (53 bits, at least 24 + 2) and then to
    f32 gives the correctly rounded result, so no double rounding can creep in. NaNs come
    out as NaNs (their payload may differ from a GPU's canonical NaN).

    Args:
        a: f32 values (anything NumPy broadcasts).
        b: f32 values.
        c: f32 values.

    Returns:
        A new float32 array of the broadcast shape.
    """
    with np.errstate(all="ignore"):
        product = np.asarray(a, np.float32).astype(np.float64) * np.asarray(b, np.float32).astype(
            np.float64
        )
        addend = np.asarray(c, np.float32).astype(np.float64)
        total = np.asarray(product + addend, dtype=np.float64)
        shift = total - product
        error = (product - (total - shift)) + (addend - shift)
        # Round to odd: an inexact total whose last bit is even moves one f64 step toward
        # the exact value, onto the neighbour whose last bit is odd.
        even = (total.view(np.int64) & 1) == 0
        inexact_even = even & (error != 0) & np.isfinite(total)
        if np.any(inexact_even):
            toward = np.where(error > 0, np.inf, -np.inf)
            total = np.where(inexact_even, np.nextafter(total, toward), total)
        result: F32Array = np.asarray(total.astype(np.float32), dtype=np.float32)
        return result
