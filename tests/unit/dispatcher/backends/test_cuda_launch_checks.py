"""The cuda backend's checks before a launch reaches the driver (no device needed): the
parameters the driver reports against the argv, the geometry, dynamic shared memory."""

from __future__ import annotations

import pytest
from tensorwasm_common.gpu_abi import AbiError, AbiFailure, ArgTag, ScalarArg
from tensorwasm_dispatcher.backends.base import BufferArg, DeviceBuffer
from tensorwasm_dispatcher.backends.cuda import _check_launch, _CudaKernel


class _Buffer(DeviceBuffer):
    size_bytes = 1024


POINTER = BufferArg(_Buffer(), 0, 1024, 0)


def kernel(sizes: tuple[int, ...] | None = (8, 8, 8, 4)) -> _CudaKernel:
    """vector_add's parameters, as the driver reports them (or a driver that cannot say)."""
    return _CudaKernel(None, None, "vector_add", sizes)


def code(
    grid: tuple[int, int, int], block: tuple[int, int, int], shared: int, args: list
) -> AbiError:  # type: ignore[type-arg]
    with pytest.raises(AbiFailure) as caught:
        _check_launch(kernel(), grid, block, shared, args)
    return caught.value.code


def test_a_matching_launch_passes() -> None:
    _check_launch(
        kernel(), (1, 1, 1), (256, 1, 1), 0, [POINTER, POINTER, POINTER, ScalarArg(ArgTag.U32, 9)]
    )


def test_argv_that_does_not_match_the_entry_is_invalid_args() -> None:
    n32, n64 = ScalarArg(ArgTag.I32, 9), ScalarArg(ArgTag.I64, 9)
    assert code((1, 1, 1), (1, 1, 1), 0, [POINTER, POINTER, POINTER]) is AbiError.INVALID_ARGS
    assert code((1, 1, 1), (1, 1, 1), 0, [POINTER, POINTER, POINTER, n64]) is AbiError.INVALID_ARGS
    assert code((1, 1, 1), (1, 1, 1), 0, [POINTER, POINTER, n32, n32]) is AbiError.INVALID_ARGS


def test_device_limits_and_shared_memory_have_the_cpu_backends_codes() -> None:
    args = [POINTER, POINTER, POINTER, ScalarArg(ArgTag.U32, 9)]
    assert code((1, 70_000, 1), (1, 1, 1), 0, args) is AbiError.INVALID_DIMENSIONS
    assert code((1, 1, 1), (1, 1, 128), 0, args) is AbiError.INVALID_DIMENSIONS
    assert code((1, 1, 1), (1, 1, 1), 48 * 1024 + 1, args) is AbiError.LAUNCH_FAILED


def test_a_kernel_whose_parameters_the_driver_does_not_report_is_never_launched() -> None:
    args = [POINTER, POINTER, POINTER, ScalarArg(ArgTag.U32, 9)]
    with pytest.raises(AbiFailure) as caught:
        _check_launch(kernel(None), (1, 1, 1), (1, 1, 1), 0, args)
    assert caught.value.code is AbiError.INVALID_ARGS
