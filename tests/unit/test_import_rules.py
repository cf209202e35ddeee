"""Import boundaries between the service packages (each service is a separate process).

- No service package imports another service package (they talk over gRPC only).
- Nothing but the dispatcher imports `cuda`; the gateway never imports `wasmtime`.

Checked twice: statically (every import statement in the sources, lazy ones included) and
at run time (what importing each server module actually loads, in a fresh interpreter).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("gateway", "executor", "dispatcher", "snapshot", "jit")
# Top-level modules each service may never import, beyond the other services.
FORBIDDEN = {
    "gateway": {"cuda", "wasmtime"},
    "executor": {"cuda"},
    "snapshot": {"cuda", "wasmtime"},
    "jit": {"cuda", "wasmtime"},
    "dispatcher": {"wasmtime"},
}


def package_dir(service: str) -> Path:
    return ROOT / "services" / service / f"tensorwasm_{service}"


def forbidden_for(service: str) -> set[str]:
    others = {f"tensorwasm_{s}" for s in SERVICES if s != service}
    return others | FORBIDDEN[service]


def imported_roots(path: Path) -> set[tuple[int, str]]:
    """(line, top-level module) of every absolute import in a source file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {(node.lineno, alias.name.split(".")[0]) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.split(".")[0]))
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_sources_import_no_forbidden_package(service: str) -> None:
    sources = sorted(package_dir(service).rglob("*.py"))
    assert sources, f"no sources under {package_dir(service)}"
    bad = forbidden_for(service)
    violations = [
        f"{path.relative_to(ROOT)}:{line}: imports {module}"
        for path in sources
        for line, module in sorted(imported_roots(path))
        if module in bad
    ]
    assert violations == []


def test_common_and_protos_import_no_service() -> None:
    bad = {f"tensorwasm_{s}" for s in SERVICES} | {"cuda", "wasmtime"}
    sources = sorted((ROOT / "runtime_common").rglob("*.py"))
    violations = [
        f"{path.relative_to(ROOT)}:{line}: imports {module}"
        for path in sources
        for line, module in sorted(imported_roots(path))
        if module in bad
    ]
    assert violations == []


def loaded_modules(*modules: str) -> set[str]:
    """The top-level modules a fresh interpreter holds after importing `modules`."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_process_loads_no_forbidden_package(service: str) -> None:
    loaded = loaded_modules(f"tensorwasm_{service}.server", f"tensorwasm_{service}.__main__")
    assert f"tensorwasm_{service}" in loaded  # the check can see what was imported
    assert loaded & forbidden_for(service) == set()


def test_no_server_but_the_dispatchers_imports_cuda() -> None:
    code = (
        "import sys\n"
        "import tensorwasm_gateway.server, tensorwasm_executor.server\n"
        "import tensorwasm_snapshot.server, tensorwasm_jit.server\n"
        "bad = sorted(m for m in sys.modules if m == 'cuda' or m.startswith('cuda.'))\n"
        "assert not bad, bad\n"
        "assert 'wasmtime' in sys.modules\n"  # the executor's engine, so imports did run
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
