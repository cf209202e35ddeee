"""The GPU path end to end on the cpu backend: gateway -> executor (wasi:cuda host
functions) -> dispatcher (cpu backend), with real guests built from WAT templates."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2 as dispatcher_pb
from tensorwasm.dispatcher.v1 import dispatcher_service_pb2_grpc as dispatcher_grpc
from tensorwasm_client.client import GatewayClient, TensorWasmError

pytestmark = pytest.mark.integration


def result_of(response: Any) -> int:
    outcome = response.outcome
    assert outcome.WhichOneof("result") == "success", outcome.failure
    value: int = outcome.success.results[0].i32
    return value


def usage(stack: Any, tenant: str) -> dispatcher_pb.GetTenantUsageResponse:
    with stack.internal_channel("dispatcher") as channel:
        response: dispatcher_pb.GetTenantUsageResponse = dispatcher_grpc.DispatcherServiceStub(
            channel
        ).GetTenantUsage(dispatcher_pb.GetTenantUsageRequest(tenant=tenant), timeout=10)
    return response


def settled_usage(
    stack: Any, tenant: str, timeout_seconds: float = 10.0
) -> dispatcher_pb.GetTenantUsageResponse:
    """The tenant's usage once its sessions have ended.

    The executor ends a finished store's dispatcher session in the background (the call
    does not wait for it), so `open_sessions` reaches 0 shortly after the call returns.
    """
    deadline = time.monotonic() + timeout_seconds
    while True:
        used = usage(stack, tenant)
        if used.open_sessions == 0:
            return used
        assert time.monotonic() < deadline, f"{used.open_sessions} sessions still open"
        time.sleep(0.01)


@pytest.fixture
def vector_add(client: GatewayClient, cuda_guest: Callable[[str], bytes]) -> str:
    client.create_function("vector-add", cuda_guest("cuda_vector_add"))
    return "vector-add"


@pytest.fixture
def errors(client: GatewayClient, cuda_guest: Callable[[str], bytes]) -> str:
    client.create_function("cuda-errors", cuda_guest("cuda_errors"))
    return "cuda-errors"


def test_vector_add_runs_on_the_cpu_backend(
    client: GatewayClient, vector_add: str, stack: Any, tenant: str
) -> None:
    response = client.invoke(vector_add, "run")
    assert result_of(response) == 0, response.outcome.stderr
    assert response.outcome.stderr == b""
    used = settled_usage(stack, tenant)
    assert (used.loads, used.launches, used.failed_commands) == (1, 1, 0)
    assert used.staged_bytes_total == 3 * 512  # 256 bytes each, in one 512-byte granule
    assert used.staged_bytes_current == 0 and used.open_sessions == 0
    assert used.kernel_time.ToTimedelta().total_seconds() > 0


def test_launches_are_batched_into_one_request(
    client: GatewayClient, vector_add: str, stack: Any, tenant: str
) -> None:
    # 100 in-place launches (each reads the previous one's output) and one sync.
    assert result_of(client.invoke(vector_add, "accumulate", [Value(i32=100)])) == 0
    used = settled_usage(stack, tenant)
    assert used.launches == 100
    # the load, the 100 launches at sync, and the end of the session
    assert used.execute_requests == 3


def test_a_full_batch_is_sent_at_256_launches(
    client: GatewayClient, vector_add: str, stack: Any, tenant: str
) -> None:
    assert result_of(client.invoke(vector_add, "accumulate", [Value(i32=300)])) == 0
    used = settled_usage(stack, tenant)
    assert used.launches == 300
    assert used.execute_requests == 4  # load, 256 launches, 44 at sync, end of session


def test_a_live_instance_keeps_its_kernels_and_session(
    client: GatewayClient, vector_add: str, stack: Any, tenant: str
) -> None:
    name = client.create_instance(vector_add).instance.name
    assert result_of(client.call_instance(name, "run")) == 0
    assert result_of(client.call_instance(name, "accumulate", [Value(i32=3)])) == 0
    assert usage(stack, tenant).open_sessions == 1  # the instance's, until it is deleted
    client.delete_instance(name)
    assert settled_usage(stack, tenant).launches == 4


ERRORS = [
    ("bad_pointer_load", -2, "invalid_pointer: the PTX [4294967040, 4294967056)"),
    ("bad_pointer_arg", -2, "invalid_pointer: argv record 2 (ptr) [131000, 131256)"),
    ("unknown_kernel", -3, "invalid_kernel: kernel 99 was not loaded by this instance"),
    ("malformed_ptx", -4, "malformed_ptx: the PTX declares no `.entry vector_add`"),
    ("foreign_ptx", -1, "not_available: the cpu PTX executor does not support line 11: the "),
    ("zero_block", -8, "invalid_dimensions: block (0, 1, 1)"),
    ("too_many_threads", -8, "invalid_dimensions: block (32, 32, 2) has 2048 threads"),
    ("negative_grid", -8, "invalid_dimensions: grid (-1, 1, 1)"),
    ("bad_tag", -9, "invalid_args: argv record 0 at byte 0 has unknown tag 0x09"),
    ("truncated_record", -9, "invalid_args: argv record 0 (i32) at byte 0 is truncated"),
    ("argv_too_long", -10, "kernel_args_unsupported: argv has 4097 bytes"),
    ("too_many_records", -10, "kernel_args_unsupported: argv has more than 128 records"),
    ("short_buffer_at_sync", -5, "launch_failed: vector_add: an illegal address"),
    ("bad_error_buffer", -2, ""),
]


@pytest.mark.parametrize(("export", "code", "message"), ERRORS, ids=[e[0] for e in ERRORS])
def test_guest_errors_have_their_abi_code_and_last_error(
    client: GatewayClient, errors: str, export: str, code: int, message: str
) -> None:
    response = client.invoke(errors, export)
    assert result_of(response) == code
    stderr = response.outcome.stderr.decode("utf-8")
    assert stderr.startswith(message) if message else stderr == ""


def test_last_error_len_counts_the_message_bytes(client: GatewayClient, errors: str) -> None:
    expected = len(b"malformed_ptx: the PTX declares no `.entry vector_add`")
    assert result_of(client.invoke(errors, "error_len_after_failure")) == expected


FLOOD_REJECTIONS = {"TENANT_CAPACITY_EXHAUSTED", "EXECUTOR_SATURATED"}


def flood_and_light(
    gateway_client: Callable[[str], GatewayClient],
    wasm: bytes,
    flood: str,
    light: str,
    *,
    flood_calls: int = 24,
    light_calls: int = 5,
) -> tuple[list[str], list[int]]:
    """Floods the GPU as one tenant (256 launches a call) while another runs one launch at
    a time (two 512-byte granules staged); returns what each call got."""
    with gateway_client(flood) as flooder, gateway_client(light) as lighter:
        flooder.create_function("vector-add", wasm)
        lighter.create_function("vector-add", wasm)

        def flood_once() -> str:
            try:
                response = flooder.invoke("vector-add", "accumulate", [Value(i32=256)])
            except TensorWasmError as exc:
                assert exc.code == "RESOURCE_EXHAUSTED" and exc.reason in FLOOD_REJECTIONS, exc
                return exc.reason
            return str(result_of(response))

        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            flooding = [pool.submit(flood_once) for _ in range(flood_calls)]
            light_results = [
                result_of(lighter.invoke("vector-add", "accumulate", [Value(i32=1)]))
                for _ in range(light_calls)
            ]
            flood_results = [future.result() for future in flooding]
    return flood_results, light_results


def test_a_flooding_tenant_does_not_fail_a_light_one(
    stack: Any, cuda_guest: Callable[[str], bytes], tenant: str
) -> None:
    flood_results, light_results = flood_and_light(
        stack.client, cuda_guest("cuda_vector_add"), f"{tenant}-flood"[:63], tenant
    )
    assert light_results == [0] * 5
    assert "0" in flood_results  # the flood ran too (whatever was turned away was told so)
    assert set(flood_results) <= {"0"} | FLOOD_REJECTIONS


# --- a private stack: a tiny GPU quota, one dispatcher request in flight per tenant ----


@pytest.fixture(scope="module")
def tight_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from .conftest import start_stack

    running = start_stack(
        tmp_path_factory.mktemp("tight-gpu"),
        {
            "TENSORWASM_DISPATCHER_TENANT_MEMORY_QUOTA_BYTES": "1024",
            "TENSORWASM_DISPATCHER_MAX_IN_FLIGHT_PER_TENANT": "1",
            "TENSORWASM_DISPATCHER_RETRY_AFTER_SECONDS": "0.01",
            "TENSORWASM_EXECUTOR_WORKERS": "8",
        },
    )
    try:
        yield running
    finally:
        running.stop()


def test_staging_over_the_quota_is_quota_exceeded_at_sync(
    tight_stack: Any, cuda_guest: Callable[[str], bytes]
) -> None:
    with tight_stack.client("quota") as client:
        client.create_function("vector-add", cuda_guest("cuda_vector_add"))
        # a, b, c: 256 bytes each, charged a 512-byte allocation granule each: 1536 > 1024
        response = client.invoke("vector-add", "run")
        assert result_of(response) == -6
        stderr = response.outcome.stderr.decode("utf-8")
        assert stderr.startswith(
            "quota_exceeded: staging 256 bytes (512 allocated) would exceed the tenant's"
        )
        # b and c (two granules) fit
        assert result_of(client.invoke("vector-add", "accumulate", [Value(i32=2)])) == 0
    used = usage(tight_stack, "quota")
    assert (used.memory_quota_bytes, used.staged_bytes_peak, used.staged_bytes_current) == (
        1024,
        1024,
        0,
    )


def test_back_pressure_is_absorbed_and_the_light_tenant_is_served(
    tight_stack: Any, cuda_guest: Callable[[str], bytes]
) -> None:
    flood_results, light_results = flood_and_light(
        tight_stack.client, cuda_guest("cuda_vector_add"), "flood", "light", flood_calls=16
    )
    assert light_results == [0] * 5
    assert set(flood_results) <= {"0"} | FLOOD_REJECTIONS
    assert usage(tight_stack, "light").failed_commands == 0
    flood = usage(tight_stack, "flood")
    assert flood.failed_commands == 0  # the executor came back after RetryInfo's delay
    assert flood.launches == 256 * flood_results.count("0")
