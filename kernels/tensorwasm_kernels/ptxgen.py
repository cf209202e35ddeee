"""Regenerates the canonical PTX from the CUDA sources with nvcc (a developer tool).

    python -m tensorwasm_kernels.ptxgen            # rewrite ptx/<name>.ptx
    python -m tensorwasm_kernels.ptxgen --check    # exit 1 if a .ptx is stale

nvcc's PTX keeps its code; only the leading comment block (compiler build ids) is replaced
by a header naming the source, the flags and the compiler release, and `.version` is
lowered to `PTX_ISA_VERSION` so that older drivers load it too (ptxas rejects the file if
any instruction needs a newer ISA, and the tests run ptxas on every file).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
KERNEL_NAMES = ("vector_add", "saxpy", "matmul", "conv2d", "reduce_sum")
NVCC_FLAGS = ("--ptx", "-arch=compute_80")
# PTX ISA 7.8 (CUDA 11.8) is what the jit cache emits too; it knows sm_80 and sm_90.
PTX_ISA_VERSION = "7.8"
CUDA_BIN = Path("/usr/local/cuda/bin")

_RELEASE = re.compile(r"^Cuda compilation tools, release .*$", re.MULTILINE)
_VERSION = re.compile(r"^\.version \d+\.\d+$", re.MULTILINE)
_HEADER = """\
//
// tensorwasm-kernels: canonical PTX of `{name}`. Do not edit: regenerate it with
// `python -m tensorwasm_kernels.ptxgen`.
// Source: cu/{name}.cu, compiled with nvcc {flags}
// Compiler: {release}
// `.version` lowered from {nvcc_version} to {isa}: nothing below needs a newer PTX ISA.
//
"""


class PtxGenError(RuntimeError):
    """nvcc is missing, failed, or wrote PTX without the expected directives."""


def find_tool(name: str) -> str | None:
    """The path of a CUDA tool (nvcc, ptxas): on PATH, else under /usr/local/cuda/bin."""
    found = shutil.which(name)
    if found is None and (CUDA_BIN / name).is_file():
        found = str(CUDA_BIN / name)
    return found


def nvcc_release(nvcc: str) -> str:
    """The "Cuda compilation tools, release X.Y, VX.Y.Z" line of `nvcc --version`."""
    output = subprocess.run(
        [nvcc, "--version"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    match = _RELEASE.search(output)
    if match is None:
        raise PtxGenError(f"no release line in `{nvcc} --version`:\n{output}")
    return match.group(0)


def canonicalize(name: str, nvcc_ptx: str, release: str) -> str:
    """Turns nvcc's PTX for kernel `name` into the canonical text.

    Args:
        name: The kernel's name.
        nvcc_ptx: What `nvcc --ptx` wrote.
        release: The compiler's release line (see `nvcc_release`).

    Returns:
        The header, then nvcc's PTX from its first directive on, `.version` lowered.

    Raises:
        PtxGenError: The PTX has no `.version` directive.
    """
    lines = nvcc_ptx.replace("\r\n", "\n").split("\n")
    first_code = next(i for i, line in enumerate(lines) if line and not line.startswith("//"))
    body = "\n".join(lines[first_code:]).rstrip("\n") + "\n"
    version = _VERSION.search(body)
    if version is None:
        raise PtxGenError(f"nvcc wrote no .version directive for {name}")
    header = _HEADER.format(
        name=name,
        flags=" ".join(NVCC_FLAGS),
        release=release,
        nvcc_version=version.group(0).split()[1],
        isa=PTX_ISA_VERSION,
    )
    return header + "\n" + _VERSION.sub(f".version {PTX_ISA_VERSION}", body, count=1)


def generate(name: str, nvcc: str) -> str:
    """Compiles `cu/<name>.cu` with nvcc and returns the canonical PTX text.

    Raises:
        PtxGenError: nvcc failed.
    """
    source = PACKAGE_DIR / "cu" / f"{name}.cu"
    with tempfile.TemporaryDirectory(prefix="tensorwasm-ptxgen-") as scratch:
        output = Path(scratch) / f"{name}.ptx"
        result = subprocess.run(
            [nvcc, *NVCC_FLAGS, "-o", str(output), str(source)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            raise PtxGenError(f"nvcc failed on {source.name}:\n{result.stderr}")
        nvcc_ptx = output.read_text(encoding="utf-8")
    return canonicalize(name, nvcc_ptx, nvcc_release(nvcc))


def main(argv: Sequence[str] | None = None) -> int:
    """Regenerates (or, with --check, verifies) every ptx/<name>.ptx; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m tensorwasm_kernels.ptxgen")
    parser.add_argument("--check", action="store_true", help="fail if a .ptx is stale")
    parser.add_argument("--nvcc", default=None, help="nvcc to use (default: PATH, CUDA_BIN)")
    args = parser.parse_args(argv)
    nvcc = args.nvcc or find_tool("nvcc")
    if nvcc is None:
        print("ptxgen: nvcc not found (install the CUDA toolkit)", file=sys.stderr)
        return 2
    stale = []
    for name in KERNEL_NAMES:
        target = PACKAGE_DIR / "ptx" / f"{name}.ptx"
        text = generate(name, nvcc)
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if text == current:
            continue
        stale.append(target.name)
        if not args.check:
            target.write_text(text, encoding="utf-8", newline="\n")
    verb = "stale" if args.check else "written"
    print(f"ptxgen: {verb}: {', '.join(stale) or 'none'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
