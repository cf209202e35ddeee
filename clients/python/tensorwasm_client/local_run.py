"""`tensorwasm run`: runs a module in this process on the executor's sandbox, without
the services, with the same limits, WASI view and outcome.

A guest that imports `wasi:cuda` or `tensorwasm:gpu` runs too: its batches go to the
dispatcher's batch runner in this process, on the cpu backend (PTX run by its PTX executor),
as the services would run them on a host without a GPU. The jit cache is not there, so
`jit_kernel` and the tensor ops answer not_available.

As under `wasmtime run`: the guest's stdout and stderr are written through as it writes
them, stdin is the caller's, a Ctrl-C stops even a guest spinning in native code (the call
runs on a thread of its own and is cancelled within about one epoch tick). Unlike it,
every run has a deadline (`DEFAULT_RUN_TIMEOUT_SECONDS` unless told otherwise) and each
output stream a cap.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tensorwasm.common.v1.values_json import ArgumentError, to_wire

DEFAULT_RUN_TIMEOUT_SECONDS = 300.0
# `--timeout 0`: no deadline worth the name (a year), the sandbox needs a finite one.
NO_DEADLINE_SECONDS = 365 * 24 * 3600.0
DEFAULT_MAX_OUTPUT_BYTES = 1 << 20
# Host modules the executor provides, served by the dispatcher (in process under `run`, on
# the cpu backend) and the jit cache (not under `run`).
GPU_IMPORT_PREFIXES = ("wasi:cuda/", "tensorwasm:gpu/")
# The tenant a local run's GPU session is accounted to.
LOCAL_TENANT = "local"

OutputSink = Callable[[str, bytes], None]


@dataclass(frozen=True)
class LocalOutcome:
    """What a local run ended with: the results (None on failure) or the failure."""

    results: list[Any] | None
    has_results: bool  # the export returns values (print them), unlike `_start`
    failure_reason: str
    failure_message: str
    exit_code: int
    stdout_truncated: bool
    stderr_truncated: bool


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


class LocalModule:
    """A module compiled in a local sandbox, one export chosen and its arguments converted:
    each `call` spawns a fresh instance, calls the export, and ends the instance (as the
    services do for a call), so `run` calls it once and `bench` many times."""

    def __init__(self, box: Any, module: Any, export: str, values: list[Any], gpu: Any) -> None:
        self._box = box
        self._module = module
        self.export = export
        self._values = values
        self._gpu = gpu

    def call(
        self,
        *,
        wasi: Any,
        stdin: bytes = b"",
        on_output: OutputSink | None = None,
        cancel: threading.Event | None = None,
        fuel: int = 0,
    ) -> Any:
        """One call in a fresh instance; returns the sandbox's Outcome (a guest failure
        is in it, not raised)."""
        return self._box.invoke(
            self._module,
            self.export,
            self._values,
            stdin=stdin,
            fuel=fuel or None,
            wasi=wasi,
            on_output=on_output,
            cancel=cancel,
            host_state=self._gpu.state_for(self._module, LOCAL_TENANT) if self._gpu else None,
        )


@contextmanager
def local_module(
    path: Path,
    *,
    export: str,
    json_args: Sequence[object],
    timeout_seconds: float,
    fuel: int,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
) -> Iterator[tuple[LocalModule, bool]]:
    """Compiles `path` in a sandbox of this process and prepares a call of `export` (the
    default export when empty) with `json_args`; yields it with whether the export returns
    values. `timeout_seconds` 0 means no deadline.

    Raises:
        ArgumentError: the executor package is not installed, the module is invalid or
            imports what the sandbox lacks (a GPU import says where it does run), or the
            export or the arguments do not fit the module.
    """
    try:
        from tensorwasm_common.errors import ServiceError
        from tensorwasm_executor.convert import export_to_wire, value_from_wire
        from tensorwasm_executor.wasm.sandbox import Sandbox
    except ImportError:
        raise ArgumentError(
            "tensorwasm run needs the executor package: pip install 'tensorwasm-client[local]'"
        ) from None

    wasm = load_module_bytes(path)
    deadline = timeout_seconds if timeout_seconds > 0 else NO_DEADLINE_SECONDS
    # The GPU host only for a module that names a GPU module (a cheap byte search: the
    # import's module name is in the binary as UTF-8), so other runs start as light as ever.
    gpu = _local_gpu_host() if any(p.encode() in wasm for p in GPU_IMPORT_PREFIXES) else None
    with Sandbox(
        fuel_metering=fuel > 0,
        default_timeout_seconds=deadline,
        max_output_bytes=max_output_bytes,
        host_modules=gpu.host_modules if gpu is not None else (),
    ) as box:
        try:
            module = box.compile(hashlib.sha256(wasm).hexdigest(), wasm)
        except ServiceError as exc:
            raise ArgumentError(_refusal(path, exc)) from None
        exports = {e.name: e for e in module.exports}
        chosen = export or _default_export(list(exports))
        if chosen not in exports:
            raise ArgumentError(f"choose an export with --export: {', '.join(exports)}")
        signature = export_to_wire(exports[chosen]).signature
        params = list(signature.params)
        values = [value_from_wire(v, i) for i, v in enumerate(to_wire(list(json_args), params))]
        yield LocalModule(box, module, chosen, values, gpu), bool(signature.results)


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
    on_output: OutputSink,
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
) -> LocalOutcome:
    """Compiles and runs one export, its output passed to `on_output` as it is written.

    `timeout_seconds` 0 means no deadline. A KeyboardInterrupt (Ctrl-C) while the guest
    runs cancels it, waits for it to stop, and is raised again.

    Raises:
        ArgumentError: as `local_module` does.
    """
    with local_module(
        path, export=export, json_args=json_args, timeout_seconds=timeout_seconds,
        fuel=fuel, max_output_bytes=max_output_bytes,
    ) as (prepared, has_results):  # fmt: skip
        from tensorwasm_common.errors import ServiceError
        from tensorwasm_executor.wasm.sandbox import WasiOptions

        wasi = WasiOptions(
            argv=(path.name, *argv), env=tuple(env), read_only_dir=read_only_dir,
            guest_dir=guest_dir,
        )  # fmt: skip
        cancel = threading.Event()
        done: list[Any] = []

        def call() -> None:
            try:
                done.append(
                    prepared.call(
                        wasi=wasi, stdin=stdin, on_output=on_output, cancel=cancel, fuel=fuel
                    )
                )
            except BaseException as exc:  # re-raised on the caller's thread
                done.append(exc)

        worker = threading.Thread(target=call, name="tensorwasm-run", daemon=True)
        try:  # started inside: a Ctrl-C as soon as the guest runs still cancels it
            worker.start()
            while worker.is_alive():
                worker.join(0.1)  # the main thread stays free to take a Ctrl-C
        except KeyboardInterrupt:
            cancel.set()
            worker.join()
            raise
    result = done[0]
    if isinstance(result, ServiceError):
        raise ArgumentError(str(result)) from None
    if isinstance(result, BaseException):
        raise result
    return local_outcome(result, has_results)


def local_outcome(result: Any, has_results: bool) -> LocalOutcome:
    """The sandbox's Outcome of a local call as a LocalOutcome (results as JSON values)."""
    from tensorwasm.common.v1.values_json import to_json
    from tensorwasm_executor.convert import value_to_wire

    failure = result.failure
    return LocalOutcome(
        results=None
        if failure is not None
        else list(to_json([value_to_wire(v) for v in result.results or ()])),
        has_results=has_results,
        failure_reason=failure.reason if failure is not None else "",
        failure_message=failure.message if failure is not None else "",
        exit_code=(failure.exit_code or 0) if failure is not None else 0,
        stdout_truncated=result.stdout_truncated,
        stderr_truncated=result.stderr_truncated,
    )


def _local_gpu_host() -> Any:
    """The executor's GPU host (`CudaHost`), its batches run by a dispatcher batch runner in
    this process on the cpu backend."""
    try:
        from tensorwasm_dispatcher.accounting import Ledger
        from tensorwasm_dispatcher.backends.cpu import CpuBackend
        from tensorwasm_dispatcher.batch_runner import Dispatcher
        from tensorwasm_dispatcher.gpu_sessions import GpuSessionTable
        from tensorwasm_executor.gpu.host import CudaHost
    except ImportError:
        raise ArgumentError(
            "a GPU guest under tensorwasm run needs the dispatcher package: "
            "pip install 'tensorwasm-client[local]'"
        ) from None
    backend = CpuBackend()
    ledger = Ledger(1 << 30)
    dispatcher = Dispatcher(backend, ledger, GpuSessionTable(backend, idle_ttl_seconds=600))
    return CudaHost(lambda tenant: InProcessTransport(dispatcher, tenant))


class InProcessTransport:
    """The executor's `Transport` to a dispatcher batch runner in this process."""

    def __init__(self, dispatcher: Any, tenant: str) -> None:
        self._dispatcher = dispatcher
        self._tenant = tenant

    def execute(self, request: Any, timeout_seconds: float) -> Any:
        """Runs the batch now, on the guest's thread (a malformed batch: internal, -7)."""
        import time

        from tensorwasm_common.errors import ServiceError
        from tensorwasm_common.gpu_abi import AbiError
        from tensorwasm_executor.gpu.batch import TransportError

        try:
            return self._dispatcher.execute(
                self._tenant, request, time.monotonic() + timeout_seconds
            )
        except ServiceError as exc:
            raise TransportError(AbiError.INTERNAL, exc.message) from None


def _refusal(path: Path, exc: Exception) -> str:
    """The message of a module the sandbox refused."""
    metadata = getattr(exc, "metadata", None) or {}
    module = str(metadata.get("module", ""))
    if module:
        return (
            f"{path} imports {module}.{metadata.get('name', '')}, which tensorwasm run does "
            "not provide (it provides WASI preview 1, wasi_snapshot_preview1)"
        )
    return f"{path}: {exc}"


def _default_export(names: list[str]) -> str:
    """`_start` (a command module), else the only export."""
    if "_start" in names:
        return "_start"
    return names[0] if len(names) == 1 else ""
