"""Auto-offload end to end on the cpu backend: a guest whose `matmul` export is a plain
wasm loop, declared in its `tensorwasm.offload` custom section; deployed with
`auto_offload`, an unmodified call to it runs on the dispatcher (a launch in the tenant's
usage); deployed without, the loop runs (no launch); either way the results equal NumPy.
A bad declaration fails the deploy with its reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import wasmtime
from tensorwasm.common.v1.invocation_pb2 import TRAP_CODE_MEMORY_OUT_OF_BOUNDS
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm.gateway.v1 import gateway_service_pb2 as pb
from tensorwasm_client.client import GatewayClient, TensorWasmError

from tests.integration.test_gpu_path import settled_usage

pytestmark = pytest.mark.integration

GUEST = (
    Path(__file__).resolve().parents[2] / "clients" / "guest" / "examples" / "offload_matmul.wat"
)
CANONICAL = ["a_ptr", "b_ptr", "c_ptr", "m", "n", "k"]
DECLARED = {
    "matmul": {"op": "matmul", "args": CANONICAL},
    "matmul_kmn": {"op": "matmul", "args": ["k", "m", "n", "a_ptr", "b_ptr", "c_ptr"]},
}
A_PTR, B_PTR, C_PTR = 1 << 16, 1 << 20, 1 << 21  # 64 KiB, 1 MiB, 2 MiB: 256x256 fits


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def with_section(wasm: bytes, payload: bytes, name: str = "tensorwasm.offload") -> bytes:
    """The module with a custom section appended (what cuda.h's macro or wasm-tools add)."""
    body = _leb128(len(name)) + name.encode() + payload
    return wasm + b"\x00" + _leb128(len(body)) + body


def guest_wasm(declared: Any = DECLARED) -> bytes:
    wasm = bytes(wasmtime.wat2wasm(GUEST.read_text()))
    payload = declared if isinstance(declared, bytes) else json.dumps(declared).encode()
    return with_section(wasm, payload)


def _i32(*values: int) -> list[Value]:
    return [Value(i32=value) for value in values]


def _ok(response: Any) -> Any:
    outcome = response.outcome
    assert outcome.WhichOneof("result") == "success", outcome.failure
    return outcome


def _launches(stack: Any, tenant: str) -> int:
    launches: int = settled_usage(stack, tenant).launches
    return launches


def _matmul_on_instance(client: GatewayClient, name: str, m: int, n: int, k: int) -> bytes:
    """fill, then `matmul` and `matmul_kmn` (which must agree), on one live instance;
    returns C's bytes."""
    created = client.create_instance(name, timeout_seconds=120)
    instance = created.instance.name
    try:
        _ok(client.call_instance(instance, "fill", _i32(A_PTR, B_PTR, m, n, k)))
        result = _ok(
            client.call_instance(
                instance, "matmul", _i32(A_PTR, B_PTR, C_PTR, m, n, k), timeout_seconds=120
            )
        )
        assert [r.i32 for r in result.success.results] == [0]
        first = _ok(client.call_instance(instance, "dump", _i32(C_PTR, 4 * m * n))).stdout
        # Permuted arguments, no result; written over a C zeroed by writing to it anew.
        c2 = C_PTR + 4 * m * n
        kmn = _ok(
            client.call_instance(
                instance, "matmul_kmn", _i32(k, m, n, A_PTR, B_PTR, c2), timeout_seconds=120
            )
        )
        assert list(kmn.success.results) == []
        second = _ok(client.call_instance(instance, "dump", _i32(c2, 4 * m * n))).stdout
        assert second == first
        return bytes(first)
    finally:
        client.delete_instance(instance)


def _expected(m: int, n: int, k: int) -> np.ndarray:
    a = ((np.arange(m * k) * 7) % 13 - 6).astype(np.float32).reshape(m, k)
    b = ((np.arange(k * n) * 5) % 11 - 5).astype(np.float32).reshape(k, n)
    return a @ b  # small integers: exact in f32 whatever the order of the sums


@pytest.mark.parametrize(("m", "n", "k"), [(16, 16, 16), (33, 17, 40), (256, 256, 256)])
def test_an_offloaded_export_runs_on_the_dispatcher_and_matches_numpy(
    stack: Any, client: GatewayClient, tenant: str, m: int, n: int, k: int
) -> None:
    function = client.create_function(
        "offload-on", guest_wasm(), pb.FunctionConfig(auto_offload=True)
    )
    assert {o.export_name: (o.op, list(o.args)) for o in function.config.offloads} == {
        name: (entry["op"], entry["args"]) for name, entry in DECLARED.items()
    }
    before = _launches(stack, tenant)
    got = _matmul_on_instance(client, "offload-on", m, n, k)
    np.testing.assert_array_equal(np.frombuffer(got, "<f4").reshape(m, n), _expected(m, n, k))
    assert _launches(stack, tenant) == before + 2  # matmul and matmul_kmn, one launch each


def test_without_auto_offload_the_wasm_body_runs_with_the_same_results(
    stack: Any, client: GatewayClient, tenant: str
) -> None:
    m, n, k = 33, 17, 40
    function = client.create_function("offload-off", guest_wasm())  # the section, no flag
    assert list(function.config.offloads) == []
    got = _matmul_on_instance(client, "offload-off", m, n, k)
    np.testing.assert_array_equal(np.frombuffer(got, "<f4").reshape(m, n), _expected(m, n, k))
    assert _launches(stack, tenant) == 0


def test_unary_invoke_offloads_and_falls_back_to_the_wasm_body(
    stack: Any, client: GatewayClient, tenant: str
) -> None:
    client.create_function("offload-unary", guest_wasm(), pb.FunctionConfig(auto_offload=True))
    before = _launches(stack, tenant)
    call = client.invoke("offload-unary", "matmul", _i32(A_PTR, B_PTR, C_PTR, 8, 8, 8))
    assert [r.i32 for r in _ok(call).success.results] == [0]
    assert _launches(stack, tenant) == before + 1
    # m = 0: not an op the dispatcher runs; the loop runs (and does nothing): no launch.
    zero = client.invoke("offload-unary", "matmul", _i32(A_PTR, B_PTR, C_PTR, 0, 8, 8))
    assert [r.i32 for r in _ok(zero).success.results] == [0]
    # C overlapping A: the loop's in-place semantics, not the GPU's: the loop runs.
    aliased = client.invoke("offload-unary", "matmul", _i32(A_PTR, B_PTR, A_PTR, 8, 8, 8))
    assert [r.i32 for r in _ok(aliased).success.results] == [0]
    assert _launches(stack, tenant) == before + 1
    # A past the end of memory: the wasm body runs and traps as it would have.
    outside = client.invoke("offload-unary", "matmul", _i32(64 << 16, B_PTR, C_PTR, 8, 8, 8))
    assert outside.outcome.WhichOneof("result") == "failure"
    failure = outside.outcome.failure
    assert (failure.reason, failure.trap_code) == ("TRAP", TRAP_CODE_MEMORY_OUT_OF_BOUNDS)
    assert _launches(stack, tenant) == before + 1


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        (guest_wasm({"matmul": {"op": "conv9d", "args": CANONICAL}}), "OFFLOAD_OP_UNKNOWN"),
        (
            guest_wasm({"matmul": {"op": "matmul", "args": ["a_ptr", "b_ptr", "c_ptr", "m"]}}),
            "OFFLOAD_OP_UNKNOWN",
        ),
        (guest_wasm({"fill": {"op": "matmul", "args": CANONICAL}}), "OFFLOAD_SIGNATURE_MISMATCH"),
        (guest_wasm({"gone": {"op": "matmul", "args": CANONICAL}}), "OFFLOAD_SIGNATURE_MISMATCH"),
        (guest_wasm(b'{"matmul": {"op": "matmul",'), "OFFLOAD_DECLARATION_MALFORMED"),
        (guest_wasm({"matmul": "matmul"}), "OFFLOAD_DECLARATION_MALFORMED"),
        (bytes(wasmtime.wat2wasm(GUEST.read_text())), "OFFLOAD_DECLARATION_MALFORMED"),
    ],
    ids=[
        "unknown-op", "wrong-args", "wrong-signature", "missing-export", "not-json",
        "not-an-entry", "no-section",
    ],
)  # fmt: skip
def test_a_bad_declaration_fails_the_deploy_with_its_reason(
    client: GatewayClient, module: bytes, reason: str
) -> None:
    with pytest.raises(TensorWasmError) as caught:
        client.create_function("bad-offload", module, pb.FunctionConfig(auto_offload=True))
    assert (caught.value.code, caught.value.reason) == ("INVALID_ARGUMENT", reason)
    with pytest.raises(TensorWasmError) as missing:
        client.get_function("bad-offload")
    assert missing.value.reason == "FUNCTION_NOT_FOUND"
    # Without auto_offload the section is not read: the same module deploys.
    client.create_function("bad-offload", module)
