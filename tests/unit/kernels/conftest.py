"""Fixtures of the kernel tests: an exact f32 fused multiply-add oracle built on fractions."""

from __future__ import annotations

from collections.abc import Callable
from fractions import Fraction

import numpy as np
import pytest

ExactFma = Callable[[np.float32, np.float32, np.float32], np.float32]


def _correctly_rounded_fma(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    """a * b + c in exact rational arithmetic, rounded to the nearest f32 (ties to even)."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    guess = np.float32(float(exact))  # within one f32 step of the answer
    candidates = [
        np.nextafter(guess, np.float32(-np.inf)),
        guess,
        np.nextafter(guess, np.float32(np.inf)),
    ]

    def distance(value: np.float32) -> tuple[Fraction, int]:
        odd = int(np.array(value, dtype=np.float32).view(np.uint32)) & 1
        return abs(Fraction(float(value)) - exact), odd

    return min(candidates, key=distance)


@pytest.fixture(scope="session")
def exact_fma() -> ExactFma:
    """The correctly rounded f32 fma of three finite f32 values, computed without floats."""
    return _correctly_rounded_fma
