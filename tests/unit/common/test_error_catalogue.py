"""The one error catalogue: every reason raised is an ErrorReason, each error class is defined
once, in an errors.py, and a reason one service owns always carries that service's domain."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from collections import defaultdict
from pathlib import Path

import pytest
from google.rpc import error_details_pb2
from tensorwasm.common.v1 import errors_pb2
from tensorwasm.common.v1.error_reasons import OWNED_DOMAINS
from tensorwasm_common.errors import Reason, ServiceError
from tensorwasm_common.status import error_domain, to_status_proto

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = (
    "tensorwasm_common",
    "tensorwasm_gateway",
    "tensorwasm_executor",
    "tensorwasm_dispatcher",
    "tensorwasm_snapshot",
    "tensorwasm_jit",
)
SOURCE_DIRS = ("runtime_common", "services", "clients/python")
# status.py rebuilds a peer's error as a plain ServiceError with the peer's reason.
_MAY_BUILD_SERVICE_ERROR = {"errors.py", "status.py"}


def _import_all() -> None:
    for name in PACKAGES:
        package = importlib.import_module(name)
        for module in pkgutil.walk_packages(package.__path__, f"{name}."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)


def _service_errors() -> list[type[ServiceError]]:
    _import_all()
    found: list[type[ServiceError]] = []
    pending = [ServiceError]
    while pending:
        cls = pending.pop()
        if cls.__module__.split(".")[0] in PACKAGES:
            found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def _sources() -> list[Path]:
    return [
        path
        for directory in SOURCE_DIRS
        for path in sorted((ROOT / directory).rglob("*.py"))
        if ".venv" not in path.parts
    ]


def test_reason_mirrors_the_proto_enum() -> None:
    values = errors_pb2.ErrorReason.DESCRIPTOR.values
    names = [v.name for v in values if v.number != 0]
    assert [r.value for r in Reason] == [n.removeprefix("ERROR_REASON_") for n in names]


def test_every_error_class_has_a_catalogue_reason() -> None:
    errors = _service_errors()
    assert len(errors) > 40
    for cls in errors:
        assert isinstance(cls.reason, Reason), f"{cls.__qualname__}.reason = {cls.reason!r}"


def test_error_classes_live_in_errors_modules() -> None:
    stray = [
        f"{cls.__module__}.{cls.__qualname__}"
        for cls in _service_errors()
        if cls.__module__.rsplit(".", 1)[-1] != "errors"
    ]
    assert stray == []


def test_no_two_exception_classes_share_a_name() -> None:
    _import_all()
    where: dict[str, set[str]] = defaultdict(set)
    pending: list[type[BaseException]] = [Exception]
    while pending:
        cls = pending.pop()
        if cls.__module__.split(".")[0] in PACKAGES:
            where[cls.__name__].add(cls.__module__)
        pending.extend(cls.__subclasses__())
    assert {name: modules for name, modules in where.items() if len(modules) > 1} == {}


def test_no_reason_is_a_bare_string() -> None:
    """No `reason = "X"` attribute, no `reason="X"` argument, no ad-hoc ServiceError(...)."""
    found: list[str] = []
    for path in _sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                targets = [t for t in node.targets if isinstance(t, ast.Name) and t.id == "reason"]
                if targets and isinstance(node.value.value, str) and node.value.value:
                    found.append(f"{where}:{node.lineno}: reason = {node.value.value!r}")
            elif isinstance(node, ast.Call):
                for keyword in node.keywords:
                    literal = isinstance(keyword.value, ast.Constant)
                    if keyword.arg == "reason" and literal and keyword.value.value:
                        found.append(f"{where}:{node.lineno}: reason={keyword.value.value!r}")
                func = node.func
                named = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                if named == "ServiceError" and path.name not in _MAY_BUILD_SERVICE_ERROR:
                    found.append(f"{where}:{node.lineno}: ServiceError(...)")
    assert found == []


@pytest.mark.parametrize("reason", sorted(OWNED_DOMAINS))
def test_an_owned_reason_carries_its_owner_domain_wherever_raised(reason: Reason) -> None:
    error = ServiceError("x", reason=reason)
    for service_domain in ("gateway.tensorwasm.dev", "executor.tensorwasm.dev"):
        assert error_domain(error, service_domain) == OWNED_DOMAINS[reason]
        info = error_details_pb2.ErrorInfo()
        assert to_status_proto(error, service_domain).details[0].Unpack(info)
        assert (info.reason, info.domain) == (reason.value, OWNED_DOMAINS[reason])


def test_a_generic_reason_carries_the_raising_service_domain() -> None:
    for reason in (Reason.INTERNAL, Reason.INVALID_NAME, Reason.NOT_FOUND):
        assert reason not in OWNED_DOMAINS
        error = ServiceError("x", reason=reason)
        assert error_domain(error, "jit.tensorwasm.dev") == "jit.tensorwasm.dev"


def test_invalid_wasm_has_one_domain() -> None:
    """INVALID_WASM is raised by the gateway (magic number) and the executor (compile)."""
    from tensorwasm_common.errors import InvalidWasmError

    domains = {
        error_domain(InvalidWasmError("bad"), service)
        for service in ("gateway.tensorwasm.dev", "executor.tensorwasm.dev")
    }
    assert domains == {"executor.tensorwasm.dev"}
