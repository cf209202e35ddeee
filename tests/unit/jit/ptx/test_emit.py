"""Tests of PTX generation: ptxas accepts every target, keys are stable, errors are typed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from tensorwasm_common.errors import Code
from tensorwasm_jit.errors import InvalidArgumentError, UnknownOpError, UnsupportedTargetError
from tensorwasm_jit.ptx import (
    EMITTER_VERSION,
    EMITTERS,
    MARKER_PREFIX,
    SUPPORTED_TARGETS,
    KernelSpec,
    cache_key,
    emit,
)


def _ptxas() -> str:
    """The ptxas path; skips only when it is missing and CI has not asked for it."""
    path = shutil.which("ptxas")
    if path is None:
        if os.environ.get("TENSORWASM_REQUIRE_PTXAS") == "1":
            pytest.fail("ptxas is not on PATH but TENSORWASM_REQUIRE_PTXAS=1")
        pytest.skip("ptxas is not on PATH (set TENSORWASM_REQUIRE_PTXAS=1 to fail instead)")
    return path


def _assemble(ptxas: str, ptx_file: Path, arch: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ptxas, f"-arch={arch}", "--warning-as-error", "-o", os.devnull, str(ptx_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _arch_unknown_to_ptxas(result: subprocess.CompletedProcess[str], arch: str) -> bool:
    # CUDA 13's ptxas dropped sm_70 (Volta): "Value 'sm_70' is not defined for option ...".
    return result.returncode != 0 and f"Value '{arch}' is not defined" in result.stderr


def _every_kernel(target: str) -> list[KernelSpec]:
    """One spec per (op, dtype), with several shapes for the shaped ops."""
    specs = [
        KernelSpec(op, {}, dtype, target)
        for op, emitter in sorted(EMITTERS.items())
        if not emitter.required_params
        for dtype in sorted(emitter.dtypes)
    ]
    specs += [KernelSpec("reduce_sum", {"block": block}, "f32", target) for block in (32, 1024)]
    specs += [
        KernelSpec("matmul", {"m": m, "n": n, "k": k, "tile": tile}, "f32", target)
        for m, n, k, tile in ((16, 16, 16, 16), (128, 128, 128, 16), (1, 1, 1, 8), (33, 17, 40, 32))
    ]
    specs += [
        KernelSpec("conv2d", {"height": h, "width": w}, "f32", target)
        for h, w in ((3, 3), (1, 1), (1, 9), (64, 48))
    ]
    return specs


emit(KernelSpec("vector_add", {}, "f32", "sm_80"))  # fills the registry for parametrize


@pytest.mark.parametrize("target", SUPPORTED_TARGETS)
def test_ptxas_assembles_every_kernel_for_every_target(target: str, tmp_path: Path) -> None:
    ptxas = _ptxas()
    for spec in _every_kernel(target):
        kernel = emit(spec)
        ptx_file = tmp_path / f"{kernel.entry}.ptx"
        ptx_file.write_text(kernel.ptx, encoding="utf-8")
        result = _assemble(ptxas, ptx_file, target)
        if target == "sm_70" and _arch_unknown_to_ptxas(result, target):
            # CUDA 13's ptxas knows no sm_70; PTX for `.target sm_70` assembles for any newer
            # target, so the module is checked for sm_75 (the driver JIT takes it on Volta).
            result = _assemble(ptxas, ptx_file, "sm_75")
        assert result.returncode == 0, f"ptxas failed for {kernel.entry}/{target}:\n{result.stderr}"


def test_the_sm_70_fallback_is_needed_only_where_ptxas_lacks_sm_70(tmp_path: Path) -> None:
    ptxas = _ptxas()
    ptx_file = tmp_path / "va.ptx"
    ptx_file.write_text(emit(KernelSpec("vector_add", {}, "f32", "sm_75")).ptx, encoding="utf-8")
    assert _assemble(ptxas, ptx_file, "sm_75").returncode == 0
    direct = _assemble(ptxas, ptx_file, "sm_70")
    # Either this ptxas still knows sm_70 (then it must refuse sm_75 PTX for it), or it
    # reports the architecture as unknown, which is the case the fallback above handles.
    assert direct.returncode != 0


def test_shaped_ops_bake_their_shape_and_use_shared_memory() -> None:
    matmul = emit(KernelSpec("matmul", {"m": 64, "n": 32, "k": 48, "tile": 8}, "f32", "sm_80"))
    assert matmul.entry == "tw_matmul_f32_k48_m64_n32_tile8"
    assert ".shared .align 4 .f32 tile_a[64];" in matmul.ptx
    assert matmul.ptx.count("fma.rn.f32") == 8  # the tile loop is unrolled
    assert "bar.sync 0;" in matmul.ptx
    assert "setp.lt.u32 %p2, %r5, 64;" in matmul.ptx  # m is an immediate
    default = emit(KernelSpec("matmul", {"m": 64, "n": 32, "k": 48}, "f32", "sm_80"))
    assert default.entry.endswith("_tile16")
    spelled = emit(KernelSpec("matmul", {"m": 64, "n": 32, "k": 48, "tile": 16}, "f32", "sm_80"))
    assert spelled == default  # a default spelled out is the same kernel and key
    reduce = emit(KernelSpec("reduce_sum", {}, "f32", "sm_80"))
    assert reduce.entry == "tw_reduce_sum_f32_block256"
    assert "red.global.add.f32" in reduce.ptx
    conv = emit(KernelSpec("conv2d", {"height": 1, "width": 5}, "f32", "sm_80"))
    assert conv.ptx.count("fma.rn.f32") == 3  # a one-row image has only its row's taps


def test_marker_line_names_the_kernel() -> None:
    kernel = emit(KernelSpec("relu", {}, "f16", "sm_86"))
    first = kernel.ptx.split("\n", 1)[0]
    assert first.startswith(MARKER_PREFIX)
    assert json.loads(first[len(MARKER_PREFIX) :]) == {
        "dtype": "f16",
        "emitter_version": EMITTER_VERSION,
        "entry": "tw_relu_f16",
        "op": "relu",
        "params": {},
    }


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (KernelSpec("matmul", {"m": 0, "n": 1, "k": 1}, "f32", "sm_80"), "params.m"),
        (KernelSpec("matmul", {"m": 1, "n": 1 << 16, "k": 1}, "f32", "sm_80"), "params.n"),
        (KernelSpec("matmul", {"m": 1, "n": 1, "k": 1, "tile": 12}, "f32", "sm_80"), "params.tile"),
        (KernelSpec("matmul", {"m": 1, "n": 1}, "f32", "sm_80"), "params.k"),
        (KernelSpec("matmul", {"m": 1, "n": 1, "k": 1}, "f16", "sm_80"), "dtype"),
        (KernelSpec("reduce_sum", {"block": 100}, "f32", "sm_80"), "params.block"),
        (KernelSpec("conv2d", {"height": 3, "width": -1}, "f32", "sm_80"), "params.width"),
        (KernelSpec("saxpy", {}, "f16", "sm_80"), "dtype"),
    ],
)
def test_bad_shapes_are_invalid_arguments(spec: KernelSpec, field: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        emit(spec)
    assert info.value.code is Code.INVALID_ARGUMENT
    assert info.value.metadata == {"field": field}


def test_vector_add_signature_and_directives() -> None:
    kernel = emit(KernelSpec("vector_add", {}, "f32", "sm_80"))
    assert kernel.entry == "tw_vector_add_f32"
    assert kernel.target == "sm_80"
    assert ".visible .entry tw_vector_add_f32(" in kernel.ptx
    assert re.search(r"^\.target sm_80$", kernel.ptx, re.MULTILINE)
    assert re.search(r"^\.address_size 64$", kernel.ptx, re.MULTILINE)
    assert re.search(r"^\.version \d+\.\d+$", kernel.ptx, re.MULTILINE)
    signature = kernel.ptx.split(".visible .entry tw_vector_add_f32(", 1)[1].split(")", 1)[0]
    params = [p.strip() for p in signature.split(",")]
    assert params == [".param .u64 a", ".param .u64 b", ".param .u64 c", ".param .u32 n"]


def test_vector_add_body_is_bounds_checked_add() -> None:
    f32 = emit(KernelSpec("vector_add", {}, "f32", "sm_90")).ptx
    assert "%ctaid.x" in f32
    assert "%ntid.x" in f32
    assert "%tid.x" in f32
    assert "setp.ge.u64" in f32  # a 64-bit index against n
    assert "add.rn.f32" in f32
    assert "st.global.f32" in f32
    assert "mul.lo.u64 %rd1, %rd2, 4;" in f32
    f16 = emit(KernelSpec("vector_add", {}, "f16", "sm_90")).ptx
    assert "cvt.f32.f16" in f16  # halves are added in f32 and rounded once
    assert "cvt.rn.f16.f32" in f16
    assert "mul.lo.u64 %rd1, %rd2, 2;" in f16


def test_ptx_digest_and_key_fields() -> None:
    spec = KernelSpec("vector_add", {}, "f32", "sm_86")
    kernel = emit(spec)
    assert kernel.cache_key == cache_key(spec)
    assert re.fullmatch(r"[0-9a-f]{64}", kernel.cache_key)
    assert re.fullmatch(r"[0-9a-f]{64}", kernel.ptx_digest)
    assert kernel.ptx_digest != kernel.cache_key
    assert emit(spec) == kernel


def test_cache_key_is_stable_and_ignores_param_order() -> None:
    one = KernelSpec("matmul", {"m": 64, "n": 32, "k": 16}, "f32", "sm_80")
    two = KernelSpec("matmul", [("k", 16), ("n", 32), ("m", 64)], "f32", "sm_80")
    assert one == two
    assert hash(one) == hash(two)
    assert one.params == (("k", 16), ("m", 64), ("n", 32))
    assert one.params_dict == {"k": 16, "m": 64, "n": 32}
    assert cache_key(one) == cache_key(two)
    assert cache_key(one) == cache_key(KernelSpec("matmul", dict(one.params), "f32", "sm_80"))


@pytest.mark.parametrize(
    "other",
    [
        KernelSpec("vector_add", {}, "f32", "sm_90"),
        KernelSpec("vector_add", {}, "f16", "sm_80"),
        KernelSpec("saxpy", {}, "f32", "sm_80"),
        KernelSpec("vector_add", {"n": 1}, "f32", "sm_80"),
        KernelSpec("add", {}, "f32", "sm_80"),
    ],
)
def test_cache_key_differs_by_every_field(other: KernelSpec) -> None:
    assert cache_key(KernelSpec("vector_add", {}, "f32", "sm_80")) != cache_key(other)


def test_cache_key_includes_emitter_version(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = KernelSpec("vector_add", {}, "f32", "sm_80")
    before = cache_key(spec)
    monkeypatch.setattr("tensorwasm_jit.ptx.core.EMITTER_VERSION", EMITTER_VERSION + 1)
    assert cache_key(spec) != before


def test_unknown_op() -> None:
    with pytest.raises(UnknownOpError) as info:
        emit(KernelSpec("no_such_op", {}, "f32", "sm_80"))
    assert info.value.code is Code.INVALID_ARGUMENT
    assert info.value.reason == "UNKNOWN_OP"
    assert info.value.metadata == {"op": "no_such_op"}


@pytest.mark.parametrize("target", ["sm_60", "sm_100", "compute_80", ""])
def test_unsupported_target(target: str) -> None:
    with pytest.raises(UnsupportedTargetError) as info:
        emit(KernelSpec("vector_add", {}, "f32", target))
    assert info.value.code is Code.INVALID_ARGUMENT
    assert info.value.reason == "UNSUPPORTED_TARGET"
    assert info.value.metadata == {"target": target}


@pytest.mark.parametrize("dtype", ["f64", "bf16", ""])
def test_bad_dtype(dtype: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        emit(KernelSpec("vector_add", {}, dtype, "sm_80"))
    assert info.value.reason == "INVALID_ARGUMENT"
    assert info.value.metadata == {"field": "dtype"}


def test_unexpected_param() -> None:
    with pytest.raises(InvalidArgumentError) as info:
        emit(KernelSpec("vector_add", {"tile": 16}, "f32", "sm_80"))
    assert info.value.reason == "INVALID_ARGUMENT"
    assert info.value.metadata == {"field": "params.tile"}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"m": True}, "params.m"),
        ({"m": 1.5}, "params.m"),
        ({"bad name": 1}, "params"),
        ([("m", 1), ("m", 2)], "params.m"),
    ],
)
def test_malformed_params(params: object, field: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        KernelSpec("matmul", params, "f32", "sm_80")  # type: ignore[arg-type]
    assert info.value.metadata == {"field": field}


def test_registry_has_every_op() -> None:
    assert set(EMITTERS) == {
        "vector_add", "saxpy", "relu", "neg", "abs", "sqrt", "exp",
        "add", "sub", "mul", "div", "max", "min", "reduce_sum", "matmul", "conv2d",
    }  # fmt: skip
    assert all(emitter.op == op for op, emitter in EMITTERS.items())
