"""Tests of the canonical PTX: ptxas assembles it for sm_80 and sm_90, it matches the
catalogue's parameters, and nvcc regenerates it from the CUDA sources."""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path

import pytest
from tensorwasm_kernels import CATALOG, KernelSpec, ParamKind
from tensorwasm_kernels.ptxgen import (
    KERNEL_NAMES,
    PTX_ISA_VERSION,
    PtxGenError,
    canonicalize,
    find_tool,
    generate,
    main,
    nvcc_release,
)

ARCHES = ("sm_80", "sm_90")
SPECS = [pytest.param(spec, id=spec.name) for spec in CATALOG.values()]
# C parameter types of the CUDA sources and the kinds they stand for.
C_KINDS = {
    "const float*": {ParamKind.PTR_F32_IN},
    "float*": {ParamKind.PTR_F32_OUT, ParamKind.PTR_F32_INOUT},
    "int": {ParamKind.I32},
    "unsigned int": {ParamKind.U32},
    "float": {ParamKind.F32},
}


def _tool(name: str, require_env: str) -> str:
    """The tool's path; skips only when it is missing and CI has not asked for it."""
    path = find_tool(name)
    if path is None:
        if os.environ.get(require_env) == "1":
            pytest.fail(f"{name} is not on PATH nor in /usr/local/cuda/bin but {require_env}=1")
        pytest.skip(f"{name} is not on PATH (set {require_env}=1 to fail instead)")
    return path


def _ptxas() -> str:
    return _tool("ptxas", "TENSORWASM_REQUIRE_PTXAS")


def _nvcc() -> str:
    return _tool("nvcc", "TENSORWASM_REQUIRE_NVCC")


@functools.cache
def _generated(name: str, nvcc: str) -> str:
    return generate(name, nvcc)


def _assemble(ptxas: str, ptx_text: str, arch: str, tmp_path: Path) -> None:
    ptx_file = tmp_path / f"kernel_{arch}.ptx"
    ptx_file.write_text(ptx_text, encoding="utf-8")
    result = subprocess.run(
        [ptxas, f"-arch={arch}", "--warning-as-error", "-o", os.devnull, str(ptx_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"ptxas -arch={arch} failed:\n{result.stderr}"


# --- the shipped PTX --------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("spec", SPECS)
def test_ptxas_assembles_canonical_ptx(spec: KernelSpec, arch: str, tmp_path: Path) -> None:
    _assemble(_ptxas(), spec.ptx_text(), arch, tmp_path)


@pytest.mark.parametrize("spec", SPECS)
def test_ptx_directives(spec: KernelSpec) -> None:
    text = spec.ptx_text()
    assert re.search(rf"^\.version {re.escape(PTX_ISA_VERSION)}$", text, re.MULTILINE)
    assert re.search(r"^\.target sm_80$", text, re.MULTILINE)
    assert re.search(r"^\.address_size 64$", text, re.MULTILINE)
    assert not re.search(r"(^|\s)/[A-Za-z]", text), "an absolute path in the PTX"


@pytest.mark.parametrize("spec", SPECS)
def test_ptx_entry_params_match_the_catalogue(spec: KernelSpec) -> None:
    signature = re.search(
        rf"^\.visible \.entry {spec.entry}\((.*?)\)$", spec.ptx_text(), re.MULTILINE | re.DOTALL
    )
    assert signature is not None
    params = [p.strip() for p in signature.group(1).split(",")]
    expected = [
        f".param {p.kind.ptx_type} {spec.entry}_param_{i}" for i, p in enumerate(spec.params)
    ]
    assert params == expected


@pytest.mark.parametrize("spec", SPECS)
def test_cuda_signature_matches_the_catalogue(spec: KernelSpec) -> None:
    match = re.search(
        rf'extern "C" __global__ void {spec.entry}\((.*?)\)', spec.cuda_source(), re.DOTALL
    )
    assert match is not None
    params = [" ".join(p.split()) for p in match.group(1).split(",")]
    assert len(params) == len(spec.params)
    for declared, param in zip(params, spec.params, strict=True):
        c_type, name = declared.rsplit(" ", 1)
        assert name == param.name
        assert param.kind in C_KINDS[c_type], (declared, param)


# --- regeneration with nvcc ---------------------------------------------------------------


def test_kernel_names_match_the_catalogue() -> None:
    assert tuple(CATALOG) == KERNEL_NAMES


@pytest.mark.parametrize("spec", SPECS)
def test_nvcc_compiles_the_source_to_assemblable_ptx(spec: KernelSpec, tmp_path: Path) -> None:
    text = _generated(spec.name, _nvcc())
    for arch in ARCHES:
        _assemble(_ptxas(), text, arch, tmp_path)


@pytest.mark.parametrize("spec", SPECS)
def test_canonical_ptx_is_what_this_nvcc_generates(spec: KernelSpec) -> None:
    nvcc = _nvcc()
    release = nvcc_release(nvcc)
    if f"// Compiler: {release}\n" not in spec.ptx_text():
        pytest.skip(f"the canonical PTX comes from another nvcc than this one ({release})")
    assert _generated(spec.name, nvcc) == spec.ptx_text()


def test_ptxgen_check_reports_fresh(capsys: pytest.CaptureFixture[str]) -> None:
    nvcc = _nvcc()
    if f"// Compiler: {nvcc_release(nvcc)}\n" not in CATALOG["vector_add"].ptx_text():
        pytest.skip("the canonical PTX comes from another nvcc than this one")
    assert main(["--check", "--nvcc", nvcc]) == 0
    assert "stale: none" in capsys.readouterr().out


def test_canonicalize_replaces_the_header_and_lowers_the_version() -> None:
    nvcc_ptx = (
        "//\n// Generated by NVIDIA NVVM Compiler\n//\n// Compiler Build ID: CL-1\n//\n\n"
        ".version 9.0\n.target sm_80\n.address_size 64\n\n.visible .entry k()\n{\n\tret;\n}\n\n"
    )
    text = canonicalize("k", nvcc_ptx, "Cuda compilation tools, release 13.0, V13.0.88")
    assert "NVVM" not in text
    assert "Build ID" not in text
    assert "// Compiler: Cuda compilation tools, release 13.0, V13.0.88\n" in text
    assert "lowered from 9.0 to 7.8" in text
    assert "\n.version 7.8\n.target sm_80\n" in text
    assert text.endswith("\tret;\n}\n")


def test_canonicalize_needs_a_version() -> None:
    with pytest.raises(PtxGenError, match=r"no \.version"):
        canonicalize("k", ".target sm_80\n", "release")
