"""Auto-offload from C: clients/guest/examples/cuda/offload_matmul.c (a plain C matmul loop
declared with cuda.h's `TENSORWASM_OFFLOAD`), built with clang-19 like `make guests` does,
deployed with `tensorwasm deploy --offload` and run with `tensorwasm instance` / `invoke`
through the whole stack on the cpu backend: the export runs on the dispatcher (a launch in
the tenant's usage) with correct results; deployed without `--offload`, the C loop runs
(no launch) with the same results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import wasmtime
from tensorwasm_common.offload_section import (
    SECTION_NAME,
    Declaration,
    custom_sections,
    parse_section,
)

from tests.guests import NO_CLANG, build_guests, cli, find_clang
from tests.integration.test_gpu_path import settled_usage

pytestmark = pytest.mark.integration

EXPORTS = {
    "a_buffer": ([], ["i32"]),
    "b_buffer": ([], ["i32"]),
    "c_buffer": ([], ["i32"]),
    "fill": (["i32"] * 3, ["i32"]),
    "matmul": (["i32"] * 6, ["i32"]),
    "check": (["i32"] * 3, ["i32"]),
}


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if find_clang() is None:
        pytest.skip(NO_CLANG)
    built = build_guests(tmp_path_factory.mktemp("offload-guests"))
    (path,) = [p for p in built if p.name == "offload_matmul.c.wasm"]
    return path


def test_the_macro_makes_a_custom_section_that_parses(guest: Path) -> None:
    wasm = guest.read_bytes()
    (payload,) = list(custom_sections(wasm, SECTION_NAME))
    assert json.loads(payload) == {
        "matmul": {"op": "matmul", "args": ["a_ptr", "b_ptr", "c_ptr", "m", "n", "k"]}
    }
    assert parse_section(wasm) == (
        Declaration("matmul", "matmul", ("a_ptr", "b_ptr", "c_ptr", "m", "n", "k")),
    )
    module = wasmtime.Module(wasmtime.Engine(), wasm)
    assert list(module.imports) == []  # offload needs nothing from the GPU modules
    functions = {
        e.name: ([str(t) for t in e.type.params], [str(t) for t in e.type.results])
        for e in module.exports
        if isinstance(e.type, wasmtime.FuncType)
    }
    assert functions == EXPORTS


def _json(done: Any) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _launches(stack: Any, tenant: str) -> int:
    launches: int = settled_usage(stack, tenant).launches
    return launches


def _run_on_an_instance(stack: Any, tenant: str, name: str, m: int, n: int, k: int) -> None:
    """fill, a failing check (C is still -1), matmul, a passing check: one live instance."""
    instance = _json(cli(stack.gateway, tenant, "instance", "create", name))["name"]
    try:

        def call(export: str, *args: int) -> list[int]:
            argv = ["--export", export, "--args", json.dumps(list(args)), "--timeout", "120"]
            values: list[int] = _json(
                cli(stack.gateway, tenant, "instance", "call", instance, *argv)
            )
            return values

        assert call("fill", m, n, k) == [0]
        assert call("check", m, n, k) == [1]  # the check can fail: C[0] is -1, not A @ B
        pointers = [call(f"{x}_buffer")[0] for x in "abc"]
        assert len(set(pointers)) == 3 and all(p > 0 for p in pointers)
        assert call("matmul", *pointers, m, n, k) == [0]
        assert call("check", m, n, k) == [0]
    finally:
        cli(stack.gateway, tenant, "instance", "delete", instance)


@pytest.mark.parametrize(("m", "n", "k"), [(16, 16, 16), (33, 17, 40), (256, 256, 256)])
def test_deploy_offload_runs_the_c_export_on_the_dispatcher(
    stack: Any, tenant: str, guest: Path, m: int, n: int, k: int
) -> None:
    deployed = _json(cli(stack.gateway, tenant, "deploy", str(guest), "--name", "mm", "--offload"))
    assert deployed["offloads"] == {"matmul": "matmul"}
    before = _launches(stack, tenant)
    _run_on_an_instance(stack, tenant, "mm", m, n, k)
    assert _launches(stack, tenant) == before + 1  # one matmul call, one launch
    # A unary invoke of the export offloads too (its memory is fresh: zeros in, zeros out).
    invoked = cli(
        stack.gateway, tenant, "invoke", "mm", "--export", "matmul",
        "--args", json.dumps([1 << 16, 1 << 17, 1 << 18, 8, 8, 8]),
    )  # fmt: skip
    assert (invoked.returncode, invoked.stdout, invoked.stderr) == (0, "[0]\n", "")
    assert _launches(stack, tenant) == before + 2


def test_without_offload_the_c_loop_runs(stack: Any, tenant: str, guest: Path) -> None:
    deployed = _json(cli(stack.gateway, tenant, "deploy", str(guest), "--name", "mm"))
    assert deployed.get("offloads", {}) == {}
    _run_on_an_instance(stack, tenant, "mm", 33, 17, 40)
    invoked = cli(
        stack.gateway, tenant, "invoke", "mm", "--export", "matmul",
        "--args", json.dumps([1 << 16, 1 << 17, 1 << 18, 8, 8, 8]),
    )  # fmt: skip
    assert (invoked.returncode, invoked.stdout) == (0, "[0]\n")
    assert _launches(stack, tenant) == 0
