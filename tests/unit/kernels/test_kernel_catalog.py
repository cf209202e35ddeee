"""Tests of the kernel catalogue: identities, lookups, argument checks and boundaries."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from importlib.resources import files

import blake3
import numpy as np
import pytest
from tensorwasm_kernels import (
    CATALOG,
    KernelArgumentError,
    LaunchGeometryError,
    ParamKind,
    f32_view,
    lookup_by_entry,
    lookup_by_ptx,
    normalize_ptx,
    ptx_digest,
)

NAMES = ("vector_add", "saxpy", "matmul", "conv2d", "reduce_sum")


def _zeros(size: int) -> np.ndarray:
    return np.zeros(size, dtype=np.float32)


# --- the catalogue ----------------------------------------------------------------------


def test_catalogue_holds_the_five_kernels() -> None:
    assert tuple(CATALOG) == NAMES
    for entry, spec in CATALOG.items():
        assert spec.entry == entry == spec.name
        assert spec.summary
        assert spec.params[: len(spec.pointer_params)] == spec.pointer_params
        assert spec.pointer_params + spec.scalar_params == spec.params


def test_param_layouts() -> None:
    layouts = {
        name: [(p.name, p.kind.value) for p in spec.params] for name, spec in CATALOG.items()
    }
    assert layouts == {
        "vector_add": [
            ("a", "ptr_f32_in"),
            ("b", "ptr_f32_in"),
            ("c", "ptr_f32_out"),
            ("n", "i32"),
        ],
        "saxpy": [("x", "ptr_f32_in"), ("y", "ptr_f32_inout"), ("alpha", "f32"), ("n", "i32")],
        "matmul": [
            ("a", "ptr_f32_in"),
            ("b", "ptr_f32_in"),
            ("c", "ptr_f32_out"),
            ("m", "i32"),
            ("n", "i32"),
            ("k", "i32"),
        ],
        "conv2d": [
            ("input", "ptr_f32_in"),
            ("weights", "ptr_f32_in"),
            ("output", "ptr_f32_out"),
            ("height", "i32"),
            ("width", "i32"),
        ],
        "reduce_sum": [("input", "ptr_f32_in"), ("output", "ptr_f32_inout"), ("n", "i32")],
    }


def test_param_kind_properties() -> None:
    assert [k for k in ParamKind if k.is_pointer] == [
        ParamKind.PTR_F32_IN,
        ParamKind.PTR_F32_OUT,
        ParamKind.PTR_F32_INOUT,
        ParamKind.PTR_F16_IN,
        ParamKind.PTR_F16_OUT,
        ParamKind.PTR_F16_INOUT,
    ]
    assert {k for k in ParamKind if k.is_written} == {
        ParamKind.PTR_F32_OUT,
        ParamKind.PTR_F32_INOUT,
        ParamKind.PTR_F16_OUT,
        ParamKind.PTR_F16_INOUT,
    }
    assert {k for k in ParamKind if k.is_read} == {
        ParamKind.PTR_F32_IN,
        ParamKind.PTR_F32_INOUT,
        ParamKind.PTR_F16_IN,
        ParamKind.PTR_F16_INOUT,
    }
    assert {k.element_dtype.name for k in ParamKind if k.is_pointer} == {"float32", "float16"}
    assert {k.ptx_type for k in ParamKind} == {".u64", ".u32", ".f32"}


def test_specs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        CATALOG["matmul"].name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        CATALOG["other"] = CATALOG["matmul"]  # type: ignore[index]


# --- identity and lookups -------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_ptx_digest_is_blake3_of_the_shipped_file(name: str) -> None:
    raw = files("tensorwasm_kernels").joinpath("ptx", f"{name}.ptx").read_bytes()
    assert raw.endswith(b"\n")
    assert b"\r" not in raw
    expected = blake3.blake3(raw.rstrip(b"\n")).hexdigest()
    assert CATALOG[name].ptx_digest == expected == ptx_digest(raw)
    assert re.fullmatch(r"[0-9a-f]{64}", expected)


def test_digests_differ() -> None:
    assert len({spec.ptx_digest for spec in CATALOG.values()}) == len(CATALOG)


@pytest.mark.parametrize("name", NAMES)
def test_lookup_by_ptx_finds_canonical_ptx(name: str) -> None:
    spec = CATALOG[name]
    text = spec.ptx_text()
    assert lookup_by_ptx(text, name) is spec
    assert lookup_by_ptx(text.encode(), name) is spec
    # What a C guest may hand over: CRLF line ends, a NUL terminator, no final newline.
    assert lookup_by_ptx(text.replace("\n", "\r\n").encode() + b"\0", name) is spec
    assert lookup_by_ptx(text.rstrip("\n"), name) is spec


def test_lookup_by_ptx_rejects_anything_else() -> None:
    text = CATALOG["vector_add"].ptx_text()
    assert lookup_by_ptx(text, "saxpy") is None  # another entry
    assert lookup_by_ptx(text, "no_such_entry") is None
    assert lookup_by_ptx(text.replace("add.f32", "sub.f32"), "vector_add") is None
    assert lookup_by_ptx(text.replace("\t", " "), "vector_add") is None
    assert lookup_by_ptx("", "vector_add") is None
    assert lookup_by_ptx(b"\xff\xfe not ptx", "vector_add") is None


def test_lookup_by_entry() -> None:
    assert lookup_by_entry("matmul") is CATALOG["matmul"]
    assert lookup_by_entry("MatMul") is None
    assert lookup_by_entry("") is None


def test_normalize_ptx() -> None:
    assert normalize_ptx("a\r\nb\r\n\0") == b"a\nb"
    assert normalize_ptx(b"  x  \n\n") == b"  x"
    assert normalize_ptx("é") == "é".encode()


@pytest.mark.parametrize("name", NAMES)
def test_sources_are_shipped(name: str) -> None:
    spec = CATALOG[name]
    assert f'extern "C" __global__ void {name}(' in spec.cuda_source()
    assert spec.ptx_text().count(".visible .entry") == 1
    assert f".visible .entry {name}(" in spec.ptx_text()


# --- argument checks ---------------------------------------------------------------------


def test_wrong_buffer_count() -> None:
    with pytest.raises(KernelArgumentError, match=r"vector_add takes 3 buffers \(a, b, c\), got 2"):
        CATALOG["vector_add"].run_reference([_zeros(4), _zeros(4)], [4], (1, 1, 1), (4, 1, 1))


def test_wrong_scalar_count() -> None:
    with pytest.raises(KernelArgumentError, match=r"matmul takes 3 scalars \(m, n, k\), got 2"):
        CATALOG["matmul"].run_reference([_zeros(1)] * 3, [1, 1], (1, 1, 1), (16, 16, 1))


@pytest.mark.parametrize(
    ("buffers", "scalars", "param", "message"),
    [
        ([_zeros(4), 1.0], [4], "output", "expected a float32 NumPy array, got float"),
        ([np.zeros(4, np.float64), _zeros(1)], [4], "input", "float32 array, got float64"),
        ([_zeros(4), np.zeros(8, np.float32)[::2]], [4], "output", "not contiguous"),
        ([_zeros(4), _zeros(4)], [_zeros(1)], "n", "expected an integer, got ndarray"),
        ([_zeros(4), _zeros(4)], [True], "n", "expected an integer, got bool"),
        ([_zeros(4), _zeros(4)], [4.0], "n", "expected an integer, got float"),
        ([_zeros(4), _zeros(4)], [2**32], "n", "does not fit in 32 bits"),
        ([_zeros(4), _zeros(4)], [-(2**31) - 1], "n", "does not fit in 32 bits"),
    ],
)
def test_wrong_kinds(
    buffers: list[object], scalars: list[object], param: str, message: str
) -> None:
    spec = CATALOG["reduce_sum"]
    with pytest.raises(KernelArgumentError, match=re.escape(message)) as info:
        spec.run_reference(buffers, scalars, (1, 1, 1), (4, 1, 1))  # type: ignore[arg-type]
    assert info.value.param == param


def test_f32_scalar_kinds() -> None:
    spec = CATALOG["saxpy"]
    x, y = np.ones(2, np.float32), np.ones(2, np.float32)
    spec.run_reference([x, y], [2, 2], (1, 1, 1), (2, 1, 1))  # an int alpha is fine
    assert y.tolist() == [3.0, 3.0]
    with pytest.raises(KernelArgumentError, match="alpha: expected an f32 number, got str"):
        spec.run_reference([x, y], ["2", 2], (1, 1, 1), (2, 1, 1))  # type: ignore[list-item]
    with pytest.raises(KernelArgumentError, match="alpha: an integer too large for an f32"):
        spec.run_reference([x, y], [10**400, 2], (1, 1, 1), (2, 1, 1))
    spec.run_reference([x, y], [1e300, 2], (1, 1, 1), (2, 1, 1))  # rounds to inf, as in C
    assert y.tolist() == [np.inf, np.inf]


def test_read_only_output_is_refused() -> None:
    out = _zeros(4)
    out.flags.writeable = False
    with pytest.raises(KernelArgumentError, match="c: the kernel writes this buffer") as info:
        CATALOG["vector_add"].run_reference([_zeros(4), _zeros(4), out], [4], (1, 1, 1), (4, 1, 1))
    assert info.value.param == "c"


def test_read_only_input_is_fine() -> None:
    a = np.ones(4, np.float32)
    a.flags.writeable = False
    c = _zeros(4)
    CATALOG["vector_add"].run_reference([a, a, c], [4], (1, 1, 1), (4, 1, 1))
    assert c.tolist() == [2.0] * 4


@pytest.mark.parametrize(
    ("name", "sizes", "scalars", "grid", "block", "param", "need"),
    [
        ("vector_add", (100, 100, 99), [100], (1, 1, 1), (128, 1, 1), "c", 100),
        ("vector_add", (50, 100, 100), [100], (1, 1, 1), (64, 1, 1), "a", 64),
        ("saxpy", (10, 9), [1.0, 10], (1, 1, 1), (32, 1, 1), "y", 10),
        ("matmul", (15, 16, 4), [2, 2, 8], (1, 1, 1), (16, 16, 1), "a", 16),
        ("matmul", (16, 15, 4), [2, 2, 8], (1, 1, 1), (16, 16, 1), "b", 16),
        ("conv2d", (15, 9, 16), [4, 4], (1, 1, 1), (4, 4, 1), "input", 16),
        ("conv2d", (16, 8, 16), [4, 4], (1, 1, 1), (4, 4, 1), "weights", 9),
        ("conv2d", (16, 9, 15), [4, 4], (1, 1, 1), (4, 4, 1), "output", 16),
        ("reduce_sum", (10, 0), [10], (1, 1, 1), (32, 1, 1), "output", 1),
    ],
)
def test_buffer_too_small_is_an_error_not_an_index_error(
    name: str,
    sizes: tuple[int, ...],
    scalars: list[float],
    grid: tuple[int, int, int],
    block: tuple[int, int, int],
    param: str,
    need: int,
) -> None:
    buffers = [_zeros(size) for size in sizes]
    with pytest.raises(KernelArgumentError) as info:
        CATALOG[name].run_reference(buffers, scalars, grid, block)
    assert info.value.param == param
    assert f"buffer {param} has" in str(info.value)
    assert f"the launch touches {need} ({need * 4} bytes)" in str(info.value)


def test_u32_record_reaches_an_int_param_as_its_bit_pattern() -> None:
    # 0xFFFFFFFF from a u32 argv record is -1 to the kernel's `int n`: nothing happens.
    c = np.full(4, 7.0, np.float32)
    CATALOG["vector_add"].run_reference(
        [_zeros(4), _zeros(4), c], [2**32 - 1], (1, 1, 1), (4, 1, 1)
    )
    assert c.tolist() == [7.0] * 4
    assert CATALOG["vector_add"].footprint([np.uint32(2**32 - 1)], (1, 1, 1), (4, 1, 1))["a"] == 0


@pytest.mark.parametrize(
    ("grid", "block", "message"),
    [
        ((0, 1, 1), (32, 1, 1), r"grid\[0\] = 0 is outside \[1, 2147483647\]"),
        ((1, 65536, 1), (32, 1, 1), r"grid\[1\] = 65536 is outside \[1, 65535\]"),
        ((2**31, 1, 1), (32, 1, 1), r"grid\[0\] = 2147483648"),
        ((1, 1, 1), (1025, 1, 1), r"block\[0\] = 1025 is outside \[1, 1024\]"),
        ((1, 1, 1), (1, 1, 65), r"block\[2\] = 65 is outside \[1, 64\]"),
        ((1, 1, 1), (64, 32, 1), r"block \(64, 32, 1\) has 2048 threads, more than 1024"),
        ((1, 1), (32, 1, 1), "grid must have 3 dimensions, got 2"),
        ((1, 1, 1), (32.0, 1, 1), r"block\[0\] must be an int, got float"),
        ((1, 1, 1), (True, 1, 1), r"block\[0\] must be an int, got bool"),
    ],
)
def test_launch_geometry_limits(
    grid: tuple[int, ...], block: tuple[int, ...], message: str
) -> None:
    with pytest.raises(LaunchGeometryError, match=message):
        CATALOG["vector_add"].run_reference([_zeros(1)] * 3, [1], grid, block)
    assert issubclass(LaunchGeometryError, KernelArgumentError)
    assert issubclass(KernelArgumentError, ValueError)


def test_largest_grid_is_fine_and_cheap() -> None:
    # 2**31 - 1 blocks of 1024 threads: indices are 64-bit in the kernels, never wrapped.
    c = _zeros(8)
    CATALOG["vector_add"].run_reference(
        [_zeros(8), np.ones(8, np.float32), c], [8], (2**31 - 1, 65535, 65535), (1024, 1, 1)
    )
    assert c.tolist() == [1.0] * 8


# --- staged bytes -------------------------------------------------------------------------


def test_f32_view_shares_staged_bytes() -> None:
    staged = bytearray(np.arange(3, dtype="<f4").tobytes() + b"\x01\x02")  # 14 bytes
    view = f32_view(staged)
    assert view.dtype == np.dtype("<f4")
    assert view.tolist() == [0.0, 1.0, 2.0]
    out = bytearray(12)
    CATALOG["vector_add"].run_reference([view, view, f32_view(out)], [3], (1, 1, 1), (32, 1, 1))
    assert np.frombuffer(out, "<f4").tolist() == [0.0, 2.0, 4.0]
    assert not f32_view(bytes(12)).flags.writeable
    assert f32_view(memoryview(bytearray(8))).flags.writeable
    assert f32_view(np.zeros(2, np.float64)).size == 4


def test_f32_view_of_a_read_only_buffer_cannot_be_written() -> None:
    with pytest.raises(KernelArgumentError, match="read-only"):
        CATALOG["vector_add"].run_reference(
            [_zeros(1), _zeros(1), f32_view(bytes(4))], [1], (1, 1, 1), (1, 1, 1)
        )
    with pytest.raises(ValueError, match="C-contiguous"):
        f32_view(np.zeros(8, np.uint8)[::2])


# --- boundaries -------------------------------------------------------------------------


def test_importing_the_library_loads_no_cuda_wasmtime_or_grpc() -> None:
    code = (
        "import json, sys, tensorwasm_kernels; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(json.loads(result.stdout))
    assert "tensorwasm_kernels" in loaded
    assert loaded.isdisjoint({"cuda", "wasmtime", "grpc", "tensorwasm_dispatcher"})
