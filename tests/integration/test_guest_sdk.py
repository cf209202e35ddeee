"""The guest SDK's example GPU guests (clients/guest/examples/cuda), built like `make
guests` does (C with clang against tensorwasm/cuda.h, and WAT), deployed with `tensorwasm
deploy` and run with `tensorwasm invoke` through the whole stack on the cpu backend."""

from __future__ import annotations

import importlib.util
import itertools
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TENSORWASM = Path(sys.executable).parent / "tensorwasm"
EXAMPLES = ["vector_add", "matmul", "cuda_errors"]
_TENANTS = itertools.count(1)


def load_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_guests", ROOT / "tools/build_guests.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The examples' modules by `<name>.<c|wat>` (C ones only where clang is present)."""
    out = tmp_path_factory.mktemp("guests")
    command = [sys.executable, str(ROOT / "tools/build_guests.py"), "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return {path.name.removesuffix(".wasm"): path for path in out.glob("*.wasm")}


def cli(stack: Any, tenant: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TENSORWASM), "--gateway", stack.gateway, "--tenant", tenant, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("language", ["wat", "c"])
@pytest.mark.parametrize("example", EXAMPLES)
def test_example_guest_runs_through_the_stack(
    stack: Any, built: dict[str, Path], example: str, language: str
) -> None:
    if language == "c" and load_builder().find_clang() is None:
        pytest.skip("no clang for wasm32-wasi (clang-19, wasi-libc): run `make guest-toolchain`")
    module = built[f"{example}.{language}"]
    tenant = f"sdk-{next(_TENANTS)}"
    name = f"{example.replace('_', '-')}-{language}"
    deployed = cli(stack, tenant, "deploy", str(module), "--name", name)
    assert deployed.returncode == 0, deployed.stderr
    assert json.loads(deployed.stdout)["exports"]["run"] == "() -> (i32)"
    invoked = cli(stack, tenant, "invoke", name, "--export", "run")
    assert invoked.returncode == 0, invoked.stderr
    # 0: every check in the guest held (else a code or 1 + the first wrong index).
    assert invoked.stdout == "[0]\n", invoked.stderr
    if example != "cuda_errors":
        assert invoked.stderr == ""


def test_the_header_matches_the_abi() -> None:
    """The C header's codes, tags and caps are the ones the executor enforces."""
    from tensorwasm_common import gpu_abi

    header = (ROOT / "clients/guest/include/tensorwasm/cuda.h").read_text()
    for error in gpu_abi.AbiError:
        assert f"#define WASI_CUDA_ERR_{error.name} ({int(error)})" in header
    for tag in gpu_abi.ArgTag:
        prefix = "TW_GPU_ARG_" if tag is gpu_abi.ArgTag.DEVICE_BUFFER else "WASI_CUDA_ARG_"
        assert f"#define {prefix}{tag.name} {int(tag):#04x}" in header
    assert f'#define WASI_CUDA_MODULE "{gpu_abi.MODULE}"' in header
    assert f'#define TW_GPU_MODULE "{gpu_abi.EXT_MODULE}"' in header
    assert f"#define WASI_CUDA_MAX_ARGV_BYTES {gpu_abi.MAX_ARGV_BYTES}" in header
    assert f"#define WASI_CUDA_MAX_ARGV_RECORDS {gpu_abi.MAX_ARGV_RECORDS}" in header
    assert f"#define WASI_CUDA_MAX_KERNELS {gpu_abi.MAX_KERNELS_PER_INSTANCE}" in header
