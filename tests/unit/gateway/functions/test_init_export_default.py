"""The init export a deploy runs unasked: Wizer's, else a WASI reactor's `_initialize`."""

from __future__ import annotations

from tensorwasm_gateway.calls import FunctionConfig
from tensorwasm_gateway.functions.registry import ExportRecord
from tensorwasm_gateway.functions.service import resolve_init_export


def _exports(*names: str, params: tuple[str, ...] = ()) -> list[ExportRecord]:
    return [ExportRecord(name, params, ()) for name in names]


def test_a_reactor_is_initialised_at_deploy() -> None:
    config = FunctionConfig()
    assert resolve_init_export(config, _exports("_initialize", "inc")) == "_initialize"
    both = _exports("_initialize", "wizer.initialize")
    assert resolve_init_export(config, both) == "wizer.initialize"  # Wizer's first
    assert resolve_init_export(config, _exports("_initialize", params=("i32",))) == ""
    assert resolve_init_export(FunctionConfig(no_init=True), _exports("_initialize")) == ""
