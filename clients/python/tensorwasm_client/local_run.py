"""`tensorwasm run`: runs a module in this process on the executor's sandbox, without
the services (as `wasmtime run` does), with the same limits, WASI view and outcome."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from tensorwasm.common.v1 import invocation_pb2
from tensorwasm.common.v1.values_json import ArgumentError, to_wire


def load_module_bytes(path: Path) -> bytes:
    """A .wasm file's bytes, or a .wat file assembled to binary."""
    source = path.read_bytes()
    if path.suffix != ".wat":
        return source
    import wasmtime

    try:
        return bytes(wasmtime.wat2wasm(source.decode()))
    except wasmtime.WasmtimeError as exc:
        raise ArgumentError(f"{path} is not valid WAT: {exc}") from None


def run_local(
    path: Path,
    *,
    export: str,
    json_args: Sequence[object],
    argv: Sequence[str],
    env: Sequence[tuple[str, str]],
    read_only_dir: str | None,
    guest_dir: str,
    stdin: bytes,
    timeout_seconds: float,
    fuel: int,
) -> invocation_pb2.InvocationOutcome:
    """Compiles and runs one export; returns the outcome as the services would.

    Raises:
        ArgumentError: the executor package is not installed, or the export or the
            arguments do not fit the module.
        ServiceError (from the executor): the module is invalid, imports are missing.
    """
    try:
        from tensorwasm_executor.convert import export_to_wire, outcome_to_wire, value_from_wire
        from tensorwasm_executor.wasm.sandbox import Sandbox, WasiOptions
    except ImportError:
        raise ArgumentError(
            "tensorwasm run needs the executor package: pip install 'tensorwasm-client[local]'"
        ) from None
    wasm = load_module_bytes(path)
    with Sandbox(fuel_metering=fuel > 0, default_timeout_seconds=timeout_seconds or 3600.0) as box:
        module = box.compile(hashlib.sha256(wasm).hexdigest(), wasm)
        exports = {e.name: e for e in module.exports}
        chosen = export or _default_export(list(exports))
        if chosen not in exports:
            raise ArgumentError(f"choose an export with --export: {', '.join(exports)}")
        params = list(export_to_wire(exports[chosen]).signature.params)
        values = [value_from_wire(v, i) for i, v in enumerate(to_wire(list(json_args), params))]
        wasi = WasiOptions(
            argv=(path.name, *argv), env=tuple(env), read_only_dir=read_only_dir,
            guest_dir=guest_dir,
        )  # fmt: skip
        outcome = box.invoke(module, chosen, values, stdin=stdin, fuel=fuel or None, wasi=wasi)
    return outcome_to_wire(outcome)


def _default_export(names: list[str]) -> str:
    """`_start` (a command module), else the only export."""
    if "_start" in names:
        return "_start"
    return names[0] if len(names) == 1 else ""
