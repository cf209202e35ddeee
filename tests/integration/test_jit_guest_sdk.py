"""The jit guest API from C: the SDK header's `tw_gpu_jit_kernel` and `tw_gpu_matmul`
(clients/guest/include/tensorwasm/cuda.h), the examples clients/guest/examples/cuda/jit_*.c
built like `make guests` does, deployed with `tensorwasm deploy` and run with `tensorwasm
invoke` through the whole stack (gateway -> executor -> jit cache -> dispatcher) on the
cpu backend."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from tests.guests import NO_CLANG, build_guests, cli, find_clang

pytestmark = pytest.mark.integration

_TENANTS = itertools.count(1)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if find_clang() is None:
        pytest.skip(NO_CLANG)
    paths = build_guests(tmp_path_factory.mktemp("jit-guests"))
    return {p.name.removesuffix(".c.wasm"): p for p in paths if p.match("jit_*.c.wasm")}


def deploy(stack: Any, module: Path, name: str) -> str:
    tenant = f"jit-sdk-{next(_TENANTS)}"
    deployed = cli(stack.gateway, tenant, "deploy", str(module), "--name", name)
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
    invoked = cli(stack.gateway, tenant, "invoke", name, "--export", "run")
    assert invoked.returncode == 0, invoked.stderr
    # 0: every check in the guest held (else a code or 1 + the first wrong index).
    assert (invoked.stdout, invoked.stderr) == ("[0]\n", "")
    refused = cli(stack.gateway, tenant, "invoke", name, "--export", error_export)
    assert refused.returncode == 0, refused.stderr
    assert refused.stdout == f"[{code}]\n"


def test_the_header_declares_the_hosts_signatures(built: dict[str, Path]) -> None:
    """The imports clang made from the header's prototypes have exactly the wasm types the
    executor defines for `tensorwasm:gpu/host@0.1.0` (a mismatch fails instantiation)."""
    from tensorwasm_executor.gpu.jit_ops import MODULE, JitHost

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
