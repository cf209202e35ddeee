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


# The edge of each service: the modules that may use grpc and the generated protobuf code,
# because they translate the wire to and from the domain (server, servicer, converters)
# or are clients/adapters of another service. Everything else is domain and imports
# neither. Paths are relative to the service package; one ending in / is a whole package.
EDGE: dict[str, frozenset[str]] = {
    "executor": frozenset(
        {
            "__main__.py",
            "server.py",
            "servicer.py",
            "convert.py",  # wire values <-> wasm values
            "wasi.py",  # the wire's WASI configuration -> WasiOptions
            "call_log.py",  # a server interceptor
            "call_stream.py",  # the Calls stream: frames <-> the unary handlers
            "gpu/dispatcher_client.py",  # the dispatcher's client
            "gpu/jit_client.py",  # the jit cache's client
            "gpu/registry_client.py",  # the snapshot store's registered kernels
            "images/image_provider.py",  # images are snapshot records of the store
            "instances/snapshots.py",  # instance snapshots are records of the store
        }
    ),
    "gateway": frozenset(
        {
            "__main__.py",
            "server.py",
            "servicer.py",
            "kernels/servicer.py",  # the kernel registry's RPCs, mixed into the servicer
            "wire.py",  # wire messages <-> calls, function configs, invocation errors
            "limits.py",  # the wire's InvocationLimits <-> CallLimits
            "routing/executors.py",  # the executors' client
            "routing/call_stream.py",  # the executors' client: calls as stream frames
            "instances/snapshots.py",  # instance snapshots are records of the store
            "access/guard.py",  # a server interceptor
            "http/",  # the HTTP face: a client of the gateway's own gRPC API, all of it edge
        }
    ),
    "dispatcher": frozenset(
        {"__main__.py", "server.py", "servicer.py", "backends/cubin_sharing.py"}  # the jit client
    ),
    "snapshot": frozenset({"__main__.py", "server.py", "servicer.py"}),
    "jit": frozenset({"__main__.py", "server.py", "servicer.py"}),
}
WIRE_ROOTS = {"grpc", "grpc_status", "grpc_health", "grpc_reflection", "google"}


def _wire_imports(path: Path) -> list[str]:
    """The grpc and generated-protobuf modules a source file imports."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            if name.split(".")[0] in WIRE_ROOTS or name.startswith("tensorwasm."):
                found.append(f"{node.lineno}: {name}")
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_domain_modules_import_neither_grpc_nor_protobuf(service: str) -> None:
    root = package_dir(service)
    edge = EDGE[service]
    assert {p for p in edge if not (root / p).exists()} == set(), "stale EDGE entries"

    def at_edge(path: Path) -> bool:
        relative = path.relative_to(root).as_posix()
        return relative in edge or any(e.endswith("/") and relative.startswith(e) for e in edge)

    violations = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in sorted(root.rglob("*.py"))
        if not at_edge(path)
        for line in _wire_imports(path)
    ]
    assert violations == []


def _module_name(path: Path, src_root: Path) -> str:
    parts = list(path.relative_to(src_root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (lazy and TYPE_CHECKING included).

    `from pkg.sub import name` depends on `pkg.sub.name` when that is a module, else on
    `pkg.sub` itself; importing a submodule does not count as depending on its package's
    `__init__` (a package that re-exports its own modules is not a circle).
    """
    src_root = package.parent
    modules = {_module_name(p, src_root): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    if target in modules:
                        edges.add(target)
                    elif node.module in modules:
                        edges.add(node.module)
        graph[name] = edges - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


PACKAGES = [package_dir(s) for s in SERVICES] + [
    ROOT / "runtime_common" / "tensorwasm_common",
    ROOT / "clients" / "python" / "tensorwasm_client",
]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_no_import_circles(package: Path) -> None:
    assert _cycles(_import_graph(package)) == []


def test_the_circle_check_sees_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
