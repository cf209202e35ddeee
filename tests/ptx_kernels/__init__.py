"""Kernels written the way users write them (small `.cu` files under `cu/`), their PTX as
nvcc writes it (checked in under `ptx/`), and the launch cases every PTX runner is checked
with: these, the kernel library's canonical PTX and every jit-emitted kernel.

    python -m tests.ptx_kernels            # rewrite ptx/<name>.ptx with this nvcc
    python -m tests.ptx_kernels --check    # exit 1 if a .ptx is stale
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

from tensorwasm_kernels.ptxgen import PTX_ISA_VERSION, PtxGenError, nvcc_release

HERE = Path(__file__).resolve().parent
CU_DIR = HERE / "cu"
PTX_DIR = HERE / "ptx"
NVCC_FLAGS = ("--ptx", "-arch=compute_80")
USER_KERNELS = tuple(sorted(path.stem for path in CU_DIR.glob("*.cu")))
_VERSION = re.compile(r"^\.version \d+\.\d+$", re.MULTILINE)


def generate(name: str, nvcc: str) -> str:
    """nvcc's PTX of `cu/<name>.cu`, its build-id comments replaced by a header naming the
    source and the compiler, `.version` lowered to the ISA the jit cache emits."""
    source = CU_DIR / f"{name}.cu"
    with tempfile.TemporaryDirectory(prefix="tensorwasm-user-ptx-") as scratch:
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
        text = output.read_text(encoding="utf-8")
    lines = text.replace("\r\n", "\n").split("\n")
    first_code = next(i for i, line in enumerate(lines) if line and not line.startswith("//"))
    body = "\n".join(lines[first_code:]).rstrip("\n") + "\n"
    header = (
        f"//\n// A user-style test kernel: tests/ptx_kernels/cu/{name}.cu, compiled with "
        f"nvcc {' '.join(NVCC_FLAGS)}\n// Compiler: {nvcc_release(nvcc)}\n"
        f"// Regenerate with `python -m tests.ptx_kernels`.\n//\n\n"
    )
    return header + _VERSION.sub(f".version {PTX_ISA_VERSION}", body, count=1)


def ptx_text(name: str) -> str:
    """The checked-in PTX of user kernel `name`."""
    return (PTX_DIR / f"{name}.ptx").read_text(encoding="utf-8")
