"""Kernel parameters: their kinds, and how buffers and scalars are checked against them."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from tensorwasm_kernels.errors import KernelArgumentError

F32Array: TypeAlias = npt.NDArray[np.float32]
Scalar: TypeAlias = int | float | np.integer[Any] | np.floating[Any]

_I32_MIN = -(2**31)
_U32_END = 2**32


class ParamKind(enum.Enum):
    """What a kernel parameter is: an f32 buffer (and how it is used) or a scalar."""

    PTR_F32_IN = "ptr_f32_in"
    PTR_F32_OUT = "ptr_f32_out"
    PTR_F32_INOUT = "ptr_f32_inout"
    PTR_F16_IN = "ptr_f16_in"
    PTR_F16_OUT = "ptr_f16_out"
    PTR_F16_INOUT = "ptr_f16_inout"
    I32 = "i32"
    U32 = "u32"
    F32 = "f32"

    @property
    def is_pointer(self) -> bool:
        """True for the buffer kinds (a `.u64` device pointer in PTX)."""
        return self in _POINTERS

    @property
    def is_read(self) -> bool:
        """True for buffers the kernel reads."""
        return self in {
            ParamKind.PTR_F32_IN,
            ParamKind.PTR_F32_INOUT,
            ParamKind.PTR_F16_IN,
            ParamKind.PTR_F16_INOUT,
        }

    @property
    def is_written(self) -> bool:
        """True for buffers the kernel writes: the ones to copy back after a launch."""
        return self in {
            ParamKind.PTR_F32_OUT,
            ParamKind.PTR_F32_INOUT,
            ParamKind.PTR_F16_OUT,
            ParamKind.PTR_F16_INOUT,
        }

    @property
    def element_dtype(self) -> np.dtype[Any]:
        """The little-endian element type of a buffer kind (float32 or float16)."""
        return np.dtype("<f2") if self in _F16_POINTERS else np.dtype("<f4")

    @property
    def ptx_type(self) -> str:
        """The `.param` type of this kind in PTX (nvcc spells a C `int` as `.u32`)."""
        return _PTX_TYPES[self]


_F16_POINTERS = frozenset({ParamKind.PTR_F16_IN, ParamKind.PTR_F16_OUT, ParamKind.PTR_F16_INOUT})
_POINTERS = _F16_POINTERS | {ParamKind.PTR_F32_IN, ParamKind.PTR_F32_OUT, ParamKind.PTR_F32_INOUT}
_PTX_TYPES = {
    ParamKind.PTR_F32_IN: ".u64",
    ParamKind.PTR_F32_OUT: ".u64",
    ParamKind.PTR_F32_INOUT: ".u64",
    ParamKind.PTR_F16_IN: ".u64",
    ParamKind.PTR_F16_OUT: ".u64",
    ParamKind.PTR_F16_INOUT: ".u64",
    ParamKind.I32: ".u32",
    ParamKind.U32: ".u32",
    ParamKind.F32: ".f32",
}


@dataclass(frozen=True)
class Param:
    """One kernel parameter: its name in the CUDA source and its kind."""

    name: str
    kind: ParamKind


def f32_view(buffer: bytes | bytearray | memoryview | npt.NDArray[Any]) -> F32Array:
    """Views staged bytes as the f32 elements a kernel sees, without copying.

    A trailing part of fewer than 4 bytes is not an element and is left out.

    Args:
        buffer: The bytes: bytes (read-only), a bytearray, a memoryview or a C-contiguous
            NumPy array of any dtype.

    Returns:
        A 1-D little-endian float32 view; writable when `buffer` is.

    Raises:
        ValueError: `buffer` is a NumPy array that is not C-contiguous (a view of it
            could not share its memory).
    """
    if isinstance(buffer, np.ndarray):
        if not buffer.flags.c_contiguous:
            raise ValueError("f32_view needs a C-contiguous array")
        raw = buffer
    else:
        raw = np.frombuffer(buffer, dtype=np.uint8)
    as_bytes = raw.reshape(-1).view(np.uint8)
    return as_bytes[: as_bytes.size // 4 * 4].view("<f4")


def element_view(buffer: bytes | bytearray | memoryview, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """Views staged bytes as elements of `dtype` (float32 or float16), without copying.

    A trailing part shorter than one element is left out; writable when `buffer` is.
    """
    raw = np.frombuffer(buffer, dtype=np.uint8)
    return raw[: raw.size // dtype.itemsize * dtype.itemsize].view(dtype)


def check_buffer(param: Param, buffer: object) -> F32Array:
    """Checks a buffer argument and returns it as a flat view of its element type.

    Raises:
        KernelArgumentError: It is not a C-contiguous NumPy array of the kind's element
            type (float32, or float16 for the f16 kinds), or the kernel writes it and it
            is read-only.
    """
    expected = param.kind.element_dtype
    if not isinstance(buffer, np.ndarray):
        raise KernelArgumentError(
            f"{param.name}: expected a {expected.name} NumPy array, got {type(buffer).__name__}",
            param=param.name,
        )
    if buffer.dtype != expected or not buffer.flags.c_contiguous:
        raise KernelArgumentError(
            f"{param.name}: expected a C-contiguous {expected.name} array, got {buffer.dtype}"
            f"{'' if buffer.flags.c_contiguous else ' (not contiguous)'}",
            param=param.name,
        )
    if param.kind.is_written and not buffer.flags.writeable:
        raise KernelArgumentError(
            f"{param.name}: the kernel writes this buffer but it is read-only", param=param.name
        )
    flat: F32Array = buffer.reshape(-1)
    return flat


def coerce_scalar(param: Param, value: object) -> int | np.float32:
    """Checks a scalar argument and returns the value the kernel sees.

    A 32-bit integer parameter takes any value in [-2**31, 2**32): the kernel sees its low
    32 bits, so an argv record tagged u32 or i32 reaches an `int` parameter alike.

    Raises:
        KernelArgumentError: The value's type does not fit the kind, or it has more than
            32 bits.
    """
    if param.kind is ParamKind.F32:
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise KernelArgumentError(
                f"{param.name}: expected an f32 number, got {type(value).__name__}",
                param=param.name,
            )
        try:
            with np.errstate(over="ignore"):
                return np.float32(value)  # rounds like a C float conversion: 1e300 -> inf
        except OverflowError as exc:  # an int beyond any float
            raise KernelArgumentError(
                f"{param.name}: an integer too large for an f32", param=param.name
            ) from exc
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise KernelArgumentError(
            f"{param.name}: expected an integer, got {type(value).__name__}", param=param.name
        )
    number = int(value)
    if not _I32_MIN <= number < _U32_END:
        raise KernelArgumentError(
            f"{param.name}: {number} does not fit in 32 bits", param=param.name
        )
    low_bits = number % _U32_END
    if param.kind is ParamKind.I32 and low_bits >= 2**31:
        return low_bits - _U32_END
    return low_bits
