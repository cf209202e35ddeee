"""The jit guest API from C: the SDK header's `tw_gpu_jit_kernel` and `tw_gpu_matmul`
(clients/guest/include/tensorwasm/cuda.h), the examples clients/guest/examples/cuda/jit_*.c
built like `make guests` does, deployed with `tensorwasm deploy` and run with `tensorwasm
invoke` through the whole stack (gateway -> executor -> jit cache -> dispatcher) on the
cpu backend."""

from __future__ import annotations

import importlib.util
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import wasmtime

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TENSORWASM = Path(sys.executable).parent / "tensorwasm"
_TENANTS = itertools.count(1)


def _find_clang() -> str | None:
    spec = importlib.util.spec_from_file_location("build_guests", ROOT / "tools/build_guests.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    clang: str | None = module.find_clang()
    return clang


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if _find_clang() is None:
        pytest.skip("no clang for wasm32-wasi (clang-19, wasi-libc): run `make guest-toolchain`")
    out = tmp_path_factory.mktemp("jit-guests")
    command = [sys.executable, str(ROOT / "tools/build_guests.py"), "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    return {path.name.removesuffix(".c.wasm"): path for path in out.glob("jit_*.c.wasm")}


def cli(stack: Any, tenant: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TENSORWASM), "--gateway", stack.gateway, "--tenant", tenant, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def deploy(stack: Any, module: Path, name: str) -> str:
    tenant = f"jit-sdk-{next(_TENANTS)}"
    deployed = cli(stack, tenant, "deploy", str(module), "--name", name)
    assert deployed.returncode == 0, deployed.stderr
    assert json.loads(deployed.stdout)["exports"]["run"] == "() -> (i32)"
    return tenant


@pytest.mark.parametrize(
    ("example", "error_export", "code"),
    [("jit_matmul", "bad_dims", -9), ("jit_saxpy", "unknown_op", -9)],
)
def test_jit_example_runs_through_the_stack(
    stack: Any, built: dict[str, Path], example: str, error_export: str, code: int
) -> None:
    name = example.replace("_", "-")
    tenant = deploy(stack, built[example], name)
    invoked = cli(stack, tenant, "invoke", name, "--export", "run")
    assert invoked.returncode == 0, invoked.stderr
    # 0: every check in the guest held (else a code or 1 + the first wrong index).
    assert (invoked.stdout, invoked.stderr) == ("[0]\n", "")
    refused = cli(stack, tenant, "invoke", name, "--export", error_export)
    assert refused.returncode == 0, refused.stderr
    assert refused.stdout == f"[{code}]\n"


def test_the_header_declares_the_hosts_signatures(built: dict[str, Path]) -> None:
    """The imports clang made from the header's prototypes have exactly the wasm types the
    executor defines for `tensorwasm:gpu/host@0.1.0` (a mismatch fails instantiation)."""
    from tensorwasm_executor.jit_host import MODULE, JitHost

    engine = wasmtime.Engine()
    linker = wasmtime.Linker(engine)
    JitHost(None).define(linker)
    store = wasmtime.Store(engine)
    seen = set()
    for path in built.values():
        for item in wasmtime.Module.from_file(engine, str(path)).imports:
            if item.module != MODULE:
                continue
            defined = linker.get(store, MODULE, item.name or "")
            assert isinstance(defined, wasmtime.Func) and isinstance(item.type, wasmtime.FuncType)
            have, want = item.type, defined.type(store)
            assert [str(t) for t in have.params] == [str(t) for t in want.params], item.name
            assert [str(t) for t in have.results] == [str(t) for t in want.results], item.name
            seen.add(item.name)
    assert seen == {"jit_kernel", "matmul"}
