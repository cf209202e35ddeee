"""The cuda backend's checks before a launch reaches the driver (no device needed): the
entry's declared parameters against the argv, the geometry, dynamic shared memory."""

from __future__ import annotations

import pytest
from tensorwasm_common.gpu_abi import AbiError, AbiFailure, ArgTag, ScalarArg
from tensorwasm_dispatcher.backends.base import BufferArg, DeviceBuffer
from tensorwasm_dispatcher.backends.cuda import _check_launch, _CudaKernel, entry_param_sizes
from tensorwasm_kernels import CATALOG


class _Buffer(DeviceBuffer):
    size_bytes = 1024


POINTER = BufferArg(_Buffer(), 0, 1024, 0)


@pytest.mark.parametrize(
    ("name", "sizes"),
    [
        ("vector_add", (8, 8, 8, 4)),
        ("saxpy", (8, 8, 4, 4)),
        ("matmul", (8, 8, 8, 4, 4, 4)),
        ("conv2d", (8, 8, 8, 4, 4)),
        ("reduce_sum", (8, 8, 4)),
    ],
)
def test_the_library_entries_declare_their_parameter_sizes(
    name: str, sizes: tuple[int, ...]
) -> None:
    spec = CATALOG[name]
    assert entry_param_sizes(spec.ptx_text().encode(), spec.entry) == sizes


def test_aligned_byte_arrays_and_empty_lists_are_read() -> None:
    ptx = b".visible .entry k(\n .param .align 8 .b8 k_param_0[24],\n .param .f64 x\n)\n{}"
    assert entry_param_sizes(ptx, "k") == (24, 8)
    assert entry_param_sizes(b".entry none()\n{}", "none") == ()
    assert entry_param_sizes(b".entry k(.param .weird thing)", "k") is None
    assert entry_param_sizes(b".entry other()", "k") is None


def kernel() -> _CudaKernel:
    spec = CATALOG["vector_add"]
    return _CudaKernel(
        None, None, "vector_add", entry_param_sizes(spec.ptx_text().encode(), "vector_add")
    )


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
