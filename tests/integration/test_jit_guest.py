"""`tensorwasm:gpu/host@0.1.0` end to end on the cpu backend: a guest asks for a jit kernel
by op name and launches it, and offloads a whole matmul in one call; gateway -> executor
-> jit cache (EmitKernel over gRPC) -> dispatcher -> results in linear memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import wasmtime
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm.jit.v1 import jit_service_pb2 as jit_pb
from tensorwasm.jit.v1 import jit_service_pb2_grpc as jit_grpc
from tensorwasm_client.client import GatewayClient

pytestmark = pytest.mark.integration

GUEST = Path(__file__).resolve().parents[2] / "clients" / "guest" / "examples" / "jit_matmul.wat"


def _i32(*values: int) -> list[Value]:
    return [Value(i32=value) for value in values]


def _inputs(m: int, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    a = ((np.arange(m * k) * 7) % 13 - 6).astype(np.float32).reshape(m, k)
    b = ((np.arange(k * n) * 5) % 11 - 5).astype(np.float32).reshape(k, n)
    return a, b


@pytest.fixture
def guest(client: GatewayClient) -> str:
    client.create_function("jit-guest", bytes(wasmtime.wat2wasm(GUEST.read_text())))
    return "jit-guest"


def _run(client: GatewayClient, guest: str, *args: int) -> Any:
    response = client.invoke(guest, "run", _i32(*args), timeout_seconds=60)
    outcome = response.outcome
    assert outcome.WhichOneof("result") == "success", outcome.failure
    return outcome


@pytest.mark.parametrize(("m", "n", "k"), [(16, 16, 16), (33, 17, 40), (256, 256, 256)])
def test_matmul_offload_matches_numpy_and_the_wasm_loop(
    client: GatewayClient, guest: str, m: int, n: int, k: int
) -> None:
    offloaded = _run(client, guest, m, n, k, 1, 1)
    assert offloaded.success.results[0].i32 == 0, offloaded.stderr
    a, b = _inputs(m, n, k)
    expected = a @ b  # small integers: exact in f32 whatever the order
    got = np.frombuffer(offloaded.stdout, dtype="<f4").reshape(m, n)
    np.testing.assert_array_equal(got, expected)
    in_wasm = _run(client, guest, m, n, k, 0, 1)
    assert in_wasm.stdout == offloaded.stdout


def test_matmul_rejects_bad_dimensions_and_pointers(client: GatewayClient, guest: str) -> None:
    assert _run(client, guest, 0, 4, 4, 1, 0).success.results[0].i32 == -9  # invalid_args
    # 1024 x 1024 x 1 puts B and C past the 1 MiB of memory: invalid_pointer.
    assert _run(client, guest, 1024, 1024, 1, 1, 0).success.results[0].i32 == -2


def test_jit_kernel_id_works_with_wasi_cuda_launch(client: GatewayClient, guest: str) -> None:
    response = client.invoke(guest, "relu", _i32(1000), timeout_seconds=60)
    outcome = response.outcome
    assert outcome.WhichOneof("result") == "success", outcome.failure
    assert outcome.success.results[0].i32 == 0, outcome.stderr
    x = (np.arange(1000) % 9 - 4).astype(np.float32)
    np.testing.assert_array_equal(np.frombuffer(outcome.stdout, "<f4"), np.maximum(x, 0))


def test_the_jit_cache_served_the_guests_kernels(
    stack: Any, client: GatewayClient, guest: str
) -> None:
    _run(client, guest, 8, 8, 8, 1, 0)
    with stack.internal_channel("jit") as channel:
        response = jit_grpc.JitCacheServiceStub(channel).EmitKernel(
            jit_pb.EmitKernelRequest(
                op="matmul",
                params={"m": 8, "n": 8, "k": 8, "tile": 16},
                dtype=jit_pb.DATA_TYPE_F32,
                target="sm_80",
            ),
            timeout=10,
        )
    assert response.cache_hit  # the executor's EmitKernel put it there
    assert response.kernel.entry == "tw_matmul_f32_k8_m8_n8_tile16"


def test_list_kernels_and_artifacts_over_grpc(stack: Any) -> None:
    with stack.internal_channel("jit") as channel:
        stub = jit_grpc.JitCacheServiceStub(channel)
        for size in (4, 5, 6):
            stub.EmitKernel(
                jit_pb.EmitKernelRequest(
                    op="conv2d", params={"height": size, "width": size}, target="sm_86"
                ),
                timeout=10,
            )
        keys: list[str] = []
        token = ""
        while True:
            page = stub.ListKernels(jit_pb.ListKernelsRequest(page_size=2, page_token=token))
            assert len(page.kernels) <= 2
            keys += [kernel.cache_key for kernel in page.kernels]
            token = page.next_page_token
            if not token:
                break
        assert keys == sorted(keys) and len(keys) == len(set(keys)) >= 3
        with pytest.raises(grpc.RpcError) as bad_token:
            stub.ListKernels(jit_pb.ListKernelsRequest(page_token="nope"))
        assert bad_token.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        digest = "cd" * 32
        put = stub.PutArtifact(
            jit_pb.PutArtifactRequest(
                ptx_digest=digest, compute_capability="sm_90", data=b"\x7fELF"
            )
        )
        assert put.created
        got = stub.GetArtifact(
            jit_pb.GetArtifactRequest(ptx_digest=digest, compute_capability="sm_90")
        )
        assert (got.data, got.data_digest) == (b"\x7fELF", put.data_digest)
        with pytest.raises(grpc.RpcError) as missing:
            stub.GetArtifact(
                jit_pb.GetArtifactRequest(ptx_digest=digest, compute_capability="sm_80")
            )
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
