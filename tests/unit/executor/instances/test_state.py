"""A live instance's state: which module its instances run on, capture between calls, and a
new instance started from the capture carrying on where the first one was."""

from __future__ import annotations

from collections.abc import Iterator

import blake3
import pytest
import wasmtime
from tensorwasm_executor.errors import InstanceStateUnsupportedError
from tensorwasm_executor.instances.state import (
    capture_state,
    exposure_of,
    state_layout,
)
from tensorwasm_executor.wasm.instance_image import decode_image, encode_image
from tensorwasm_executor.wasm.sandbox import CompiledModule, Resident, Sandbox

# State in a global the module does not export, and in its exported memory.
HIDDEN = """
(module
  (memory (export "memory") 1)
  (global $count (mut i32) (i32.const 0))
  (global $fixed i32 (i32.const 5))
  (func (export "inc") (result i32)
    (global.set $count (i32.add (global.get $count) (global.get $fixed)))
    (i32.store (i32.const 8) (i32.add (i32.load (i32.const 8)) (i32.const 1)))
    (global.get $count))
  (func (export "stored") (result i32) (i32.load (i32.const 8))))
"""
EXPORTED = """
(module
  (memory (export "mem") 1)
  (global $count (export "count") (mut i64) (i64.const 0))
  (func (export "inc") (result i64)
    (global.set $count (i64.add (global.get $count) (i64.const 1)))
    (global.get $count)))
"""
REFERENCE = """
(module
  (table 1 funcref)
  (global (export "f") (mut funcref) (ref.null func))
  (func (export "nop")))
"""


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(default_timeout_seconds=10.0) as box:
        yield box


def live_module(sandbox: Sandbox, text: str) -> tuple[CompiledModule, object]:
    """The module a live instance runs on (exposed when needed) and its exposure."""
    wasm = bytes(wasmtime.wat2wasm(text))
    digest = blake3.blake3(wasm).hexdigest()
    exposure = exposure_of(wasm)
    if exposure.exposed_wasm is None:
        return sandbox.compile(digest, wasm), exposure
    return sandbox.compile(digest, exposure.exposed_wasm, cache_key=digest + "#x"), exposure


def spawn(sandbox: Sandbox, module: CompiledModule, image: object = None) -> Resident:
    resident, outcome = sandbox.spawn(module, image=image)  # type: ignore[arg-type]
    assert resident is not None, outcome.failure
    return resident


def result(resident: Resident, export: str) -> int:
    outcome = resident.call(export, [])
    assert outcome.results is not None, outcome.failure
    return int(outcome.results[0].payload)


def capture(sandbox: Sandbox, resident: Resident, exposure: object) -> bytes:
    module = resident.module
    layout = state_layout(module, exposure)  # type: ignore[arg-type]
    image = resident.between_calls(
        lambda store, instance: capture_state(
            store, instance, layout, source_digest=module.digest,
            engine_fingerprint=sandbox.engine_fingerprint,
        ),
        timeout=5.0,
    )  # fmt: skip
    return encode_image(image)


def test_hidden_state_runs_on_the_exposed_copy_and_round_trips(sandbox: Sandbox) -> None:
    module, exposure = live_module(sandbox, HIDDEN)
    assert exposure.exposed_wasm is not None  # type: ignore[attr-defined]
    # The exposed copy calls like the module: the same function exports.
    assert [e.name for e in module.exports] == ["inc", "stored"]
    first = spawn(sandbox, module)
    assert [result(first, "inc") for _ in range(3)] == [5, 10, 15]
    payload = capture(sandbox, first, exposure)
    image = decode_image(payload)
    assert len(image.globals) == 1  # only the mutable global; the constant is not state
    assert [m.pages for m in image.memories] == [1]

    second = spawn(sandbox, module, image)
    assert result(second, "inc") == 20 and result(second, "stored") == 4
    assert result(first, "inc") == 20  # the two instances live apart
    assert result(first, "stored") == 4 and result(second, "stored") == 4
    first.terminate()
    second.terminate()


def test_a_module_exporting_its_state_runs_as_it_is(sandbox: Sandbox) -> None:
    module, exposure = live_module(sandbox, EXPORTED)
    assert exposure.exposed_wasm is None  # type: ignore[attr-defined]
    first = spawn(sandbox, module)
    result(first, "inc")
    result(first, "inc")
    second = spawn(sandbox, module, decode_image(capture(sandbox, first, exposure)))
    assert result(second, "inc") == 3
    first.terminate()
    second.terminate()


def test_a_mutable_reference_global_cannot_be_captured(sandbox: Sandbox) -> None:
    module, exposure = live_module(sandbox, REFERENCE)
    resident = spawn(sandbox, module)
    with pytest.raises(InstanceStateUnsupportedError) as caught:
        capture(sandbox, resident, exposure)
    assert caught.value.reason == "INSTANCE_STATE_UNSUPPORTED"
    resident.terminate()
