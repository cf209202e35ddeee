"""The guest SDK's example GPU guests (clients/guest/examples/cuda), built like `make
guests` does (C with clang against tensorwasm/cuda.h, and WAT), deployed with `tensorwasm
deploy` and run with `tensorwasm invoke` through the whole stack on the cpu backend."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from tests.guests import NO_CLANG, ROOT, build_guests, cli, find_clang

pytestmark = pytest.mark.integration

EXAMPLES = ["vector_add", "matmul", "cuda_errors"]
_TENANTS = itertools.count(1)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The examples' modules by `<name>.<c|wat>` (C ones only where clang is present)."""
    paths = build_guests(tmp_path_factory.mktemp("guests"))
    return {path.name.removesuffix(".wasm"): path for path in paths}


@pytest.mark.parametrize("language", ["wat", "c"])
@pytest.mark.parametrize("example", EXAMPLES)
def test_example_guest_runs_through_the_stack(
    stack: Any, built: dict[str, Path], example: str, language: str
) -> None:
    if language == "c" and find_clang() is None:
        pytest.skip(NO_CLANG)
    module = built[f"{example}.{language}"]
    tenant = f"sdk-{next(_TENANTS)}"
    name = f"{example.replace('_', '-')}-{language}"
    deployed = cli(stack.gateway, tenant, "deploy", str(module), "--name", name)
    assert deployed.returncode == 0, deployed.stderr
    assert json.loads(deployed.stdout)["exports"]["run"] == "() -> (i32)"
    invoked = cli(stack.gateway, tenant, "invoke", name, "--export", "run")
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
