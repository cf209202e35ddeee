"""Tests of PTX generation: ptxas accepts every target, keys are stable, errors are typed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from tensorwasm_common.errors import Code
from tensorwasm_jit.errors import InvalidArgumentError, UnknownOpError, UnsupportedTargetError
from tensorwasm_jit.ptx_emit import (
    EMITTER_VERSION,
    EMITTERS,
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


@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("target", SUPPORTED_TARGETS)
def test_ptxas_assembles_vector_add(target: str, dtype: str, tmp_path: Path) -> None:
    ptxas = _ptxas()
    kernel = emit(KernelSpec("vector_add", {}, dtype, target))
    ptx_file = tmp_path / f"vector_add_{dtype}_{target}.ptx"
    ptx_file.write_text(kernel.ptx, encoding="utf-8")

    result = _assemble(ptxas, ptx_file, target)
    if _arch_unknown_to_ptxas(result, target):
        # PTX for `.target sm_XY` assembles for any sm_MN >= XY: check it on the oldest
        # newer target this ptxas knows, so the sm_70 module is still validated.
        newer = [t for t in SUPPORTED_TARGETS if int(t[3:]) > int(target[3:])]
        for arch in newer:
            result = _assemble(ptxas, ptx_file, arch)
            if not _arch_unknown_to_ptxas(result, arch):
                break
    assert result.returncode == 0, f"ptxas failed for {target}/{dtype}:\n{result.stderr}"


def test_vector_add_signature_and_directives() -> None:
    kernel = emit(KernelSpec("vector_add", {}, "f32", "sm_80"))
    assert kernel.entry == "vector_add"
    assert kernel.target == "sm_80"
    assert ".visible .entry vector_add(" in kernel.ptx
    assert re.search(r"^\.target sm_80$", kernel.ptx, re.MULTILINE)
    assert re.search(r"^\.address_size 64$", kernel.ptx, re.MULTILINE)
    assert re.search(r"^\.version \d+\.\d+$", kernel.ptx, re.MULTILINE)
    signature = kernel.ptx.split(".visible .entry vector_add(", 1)[1].split(")", 1)[0]
    params = [p.strip() for p in signature.split(",")]
    assert params == [".param .u64 a", ".param .u64 b", ".param .u64 c", ".param .u32 n"]


def test_vector_add_body_is_bounds_checked_add() -> None:
    f32 = emit(KernelSpec("vector_add", {}, "f32", "sm_90")).ptx
    assert "%ctaid.x" in f32
    assert "%ntid.x" in f32
    assert "%tid.x" in f32
    assert "setp.ge.u32" in f32
    assert "add.rn.f32" in f32
    assert "st.global.f32" in f32
    assert "mul.wide.u32 %rd7, %r5, 4;" in f32
    f16 = emit(KernelSpec("vector_add", {}, "f16", "sm_90")).ptx
    assert "add.rn.f16" in f16
    assert "mul.wide.u32 %rd7, %r5, 2;" in f16


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
    ],
)
def test_cache_key_differs_by_every_field(other: KernelSpec) -> None:
    assert cache_key(KernelSpec("vector_add", {}, "f32", "sm_80")) != cache_key(other)


def test_cache_key_includes_emitter_version(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = KernelSpec("vector_add", {}, "f32", "sm_80")
    before = cache_key(spec)
    monkeypatch.setattr("tensorwasm_jit.ptx_emit.EMITTER_VERSION", EMITTER_VERSION + 1)
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


def test_registry_has_vector_add() -> None:
    assert "vector_add" in EMITTERS
    assert EMITTERS["vector_add"].op == "vector_add"
