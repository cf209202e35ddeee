"""The wasi:cuda host module in a real Sandbox: linking, the per-store state, not_available
without a dispatcher, and the host-state lifecycle the sandbox drives."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import wasmtime
from tensorwasm_common.gpu_abi import MODULE, AbiError
from tensorwasm_executor.errors import UnsatisfiedImportError
from tensorwasm_executor.gpu.host import CudaHost
from tensorwasm_executor.gpu.host_state import CudaHostState
from tensorwasm_executor.wasm.sandbox import CompiledModule, Sandbox, current_host_state
from tensorwasm_executor.wasm.values import WasmValue

# name: (signature, arguments of a call)
CALLS = {
    "wasi_cuda_load_ptx": ("(param i32 i32 i32 i32) (result i64)", " (i32.const 0)" * 4),
    "wasi_cuda_launch": (
        "(param i64 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)",
        "(i64.const 0)" + " (i32.const 1)" * 9,
    ),
    "wasi_cuda_sync": ("(result i32)", ""),
    "wasi_cuda_last_error_len": ("(result i32)", ""),
    "wasi_cuda_last_error_copy": ("(param i32 i32) (result i32)", "(i32.const 0) (i32.const 16)"),
}


def every_import_wat() -> str:
    imports = "\n".join(
        f'(import "{MODULE}" "{name}" (func ${name} {signature}))'
        for name, (signature, _) in CALLS.items()
    )
    exports = "\n".join(
        f'(func (export "{name}") (result i64) (call ${name} {args})'
        + ("" if name == "wasi_cuda_load_ptx" else " (i64.extend_i32_s)")
        + ")"
        for name, (_, args) in CALLS.items()
    )
    return f'(module {imports} (memory (export "memory") 1) {exports})'


@pytest.fixture
def sandbox_and_host() -> tuple[Sandbox, CudaHost]:
    host = CudaHost(None)  # no dispatcher configured
    return Sandbox(host_modules=[host.host_module]), host


def compile_wat(box: Sandbox, wat: str, digest: str) -> CompiledModule:
    return box.compile(digest, bytes(wasmtime.wat2wasm(wat)))


def test_every_function_links_with_the_originals_signature(
    sandbox_and_host: tuple[Sandbox, CudaHost],
) -> None:
    box, host = sandbox_and_host
    with box:
        module = compile_wat(box, every_import_wat(), "all")
        assert MODULE in module.imported_modules
        assert host.state_for(module, "t") is None  # no dispatcher: no session
        for name in CALLS:
            outcome = box.invoke(module, name, [])
            assert outcome.failure is None, outcome.failure
            assert outcome.results == (WasmValue.i64(int(AbiError.NOT_AVAILABLE)),), name


def test_a_wrong_signature_does_not_link(sandbox_and_host: tuple[Sandbox, CudaHost]) -> None:
    box, _ = sandbox_and_host
    wat = f'(module (import "{MODULE}" "wasi_cuda_sync" (func (result i64))))'
    with box, pytest.raises(UnsatisfiedImportError) as caught:
        compile_wat(box, wat, "wrong")
    assert caught.value.reason == "UNSATISFIED_IMPORT"
    assert caught.value.metadata == {"module": MODULE, "name": "wasi_cuda_sync"}


def test_the_deprecated_last_error_ptr_is_not_provided(
    sandbox_and_host: tuple[Sandbox, CudaHost],
) -> None:
    box, _ = sandbox_and_host
    wat = f'(module (import "{MODULE}" "wasi_cuda_last_error_ptr" (func (result i32))))'
    with box, pytest.raises(UnsatisfiedImportError) as caught:
        compile_wat(box, wat, "ptr")
    assert caught.value.metadata["name"] == "wasi_cuda_last_error_ptr"


def test_modules_without_wasi_cuda_get_no_state(sandbox_and_host: tuple[Sandbox, CudaHost]) -> None:
    box, _ = sandbox_and_host
    host = CudaHost(lambda tenant: pytest.fail("no transport is made for such a module"))
    with box:
        module = compile_wat(
            box, '(module (func (export "f") (result i32) (i32.const 7)))', "plain"
        )
        assert module.imported_modules == frozenset()
        assert host.state_for(module, "t") is None


class Recorder:
    """A HostState that records what the sandbox tells it, and what host calls see."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def begin_call(self, deadline: float) -> None:
        self.events.append(("begin", deadline > 0))

    def end_call(self, store: wasmtime.Store, *, completed: bool, final: bool) -> None:
        self.events.append(("end", (completed, final)))

    def close(self) -> None:
        self.events.append(("close", None))


def probe_sandbox() -> tuple[Sandbox, list[object]]:
    seen: list[object] = []

    def define(linker: wasmtime.Linker) -> None:
        def probe() -> None:
            seen.append(current_host_state())

        linker.define_func("test:probe", "probe", wasmtime.FuncType([], []), probe)

    from tensorwasm_executor.wasm.sandbox import HostModule

    return Sandbox(host_modules=[HostModule("test:probe", define)]), seen


PROBE = """(module (import "test:probe" "probe" (func $probe))
  (func (export "go") (call $probe)) (func (export "trap") (call $probe) unreachable))"""


def test_the_sandbox_drives_the_host_state_of_an_invocation() -> None:
    box, seen = probe_sandbox()
    with box:
        module = compile_wat(box, PROBE, "probe")
        state = Recorder()
        assert box.invoke(module, "go", [], host_state=state).failure is None
        assert seen == [state]
        assert state.events == [("begin", True), ("end", (True, True)), ("close", None)]
        trapped = Recorder()
        assert box.invoke(module, "trap", [], host_state=trapped).failure is not None
        assert trapped.events[1] == ("end", (False, True))
        assert box.invoke(module, "go", []).failure is None
        assert seen[-1] is None  # a store without state sees none
    assert current_host_state() is None  # nothing is left on this thread


def test_a_live_instance_keeps_its_state_until_terminated() -> None:
    box, seen = probe_sandbox()
    with box:
        module = compile_wat(box, PROBE, "probe")
        state = Recorder()
        resident, outcome = box.spawn(module, host_state=state)
        assert resident is not None and outcome.failure is None
        resident.call("go", [])
        resident.call("go", [])
        assert seen == [state, state]
        assert ("close", None) not in state.events
        assert state.events.count(("end", (True, False))) == 3  # instantiation + two calls
        resident.terminate()
        assert state.events[-1] == ("close", None)


def test_host_state_failures_do_not_change_the_outcome() -> None:
    class Broken(Recorder):
        def end_call(self, store: wasmtime.Store, *, completed: bool, final: bool) -> None:
            raise RuntimeError("boom")

        def close(self) -> None:
            raise RuntimeError("boom")

    box, _ = probe_sandbox()
    with box:
        module = compile_wat(box, PROBE, "probe")
        assert box.invoke(module, "go", [], host_state=Broken()).failure is None


def test_cuda_host_state_is_a_host_state() -> None:
    made: list[str] = []

    def transport_for(tenant: str) -> Callable[..., object]:
        made.append(tenant)
        return lambda *args: None

    host = CudaHost(transport_for)  # type: ignore[arg-type]
    with Sandbox(host_modules=[host.host_module]) as box:
        module = compile_wat(box, every_import_wat(), "all")
        state = host.state_for(module, "tenant-a")
        assert isinstance(state, CudaHostState) and made == ["tenant-a"]
        # an untouched session: sync is 0, no error, and nothing is sent
        outcome = box.invoke(module, "wasi_cuda_sync", [], host_state=state)
        assert outcome.results == (WasmValue.i64(0),)
