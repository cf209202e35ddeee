"""The `tensorwasm:gpu/host@0.1.0` extension through the whole stack on the cpu backend:
device-resident buffers (alloc, write, launch with argv tag 0x08, read, free), the GPU-time
queries, buffers owned by their instance and freed at its end, and the tenant's quota."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm_client.client import GatewayClient

from .test_gpu_path import result_of, settled_usage, usage

pytestmark = pytest.mark.integration


@pytest.fixture
def buffers(client: GatewayClient, cuda_guest: Callable[[str], bytes]) -> str:
    client.create_function("gpu-buffers", cuda_guest("gpu_buffers"))
    return "gpu-buffers"


def test_vector_add_on_device_buffers_and_gpu_time(
    client: GatewayClient, buffers: str, stack: Any, tenant: str
) -> None:
    response = client.invoke(buffers, "run", [Value(i32=3)])
    assert result_of(response) == 0, response.outcome.stderr
    used = settled_usage(stack, tenant)
    # Three launches, no staged pointer argument: only the buffers' bytes were held.
    assert (used.launches, used.failed_commands) == (3, 0)
    # 256 bytes each, charged one 512-byte allocation granule each
    assert used.staged_bytes_total == 3 * 512
    assert used.staged_bytes_peak == 3 * 512
    # Freed at the end of the invocation (the session ended with its store).
    assert (used.device_buffers, used.device_buffer_bytes, used.staged_bytes_current) == (0, 0, 0)
    assert used.open_sessions == 0


def test_buffers_live_with_their_instance_and_report_gpu_time(
    client: GatewayClient, buffers: str, stack: Any, tenant: str
) -> None:
    name = client.create_instance(buffers).instance.name
    assert result_of(client.call_instance(name, "run", [Value(i32=1)])) == 0
    assert result_of(client.call_instance(name, "times_ok")) == 1
    handle = result_of(client.call_instance(name, "alloc", [Value(i64=1000)]))
    assert handle == 4  # handles count up per instance: a, b, c, then this one
    held = usage(stack, tenant)
    assert (held.device_buffers, held.device_buffer_bytes) == (3, 2 * 256 + 1000)
    assert held.staged_bytes_current == 2 * 512 + 1024  # whole allocation granules
    client.delete_instance(name)
    freed = settled_usage(stack, tenant)
    assert (freed.device_buffers, freed.staged_bytes_current, freed.open_sessions) == (0, 0, 0)


def test_bad_ranges_and_handles_have_their_codes(client: GatewayClient, buffers: str) -> None:
    response = client.invoke(buffers, "bad_ranges")
    assert result_of(response) == 100 * 2 + 9  # write past the end -2, unknown handle -9
    assert response.outcome.stderr == b""  # the guest did not print last_error
    assert result_of(client.invoke(buffers, "alloc", [Value(i64=0)])) == -9


def test_a_device_buffer_over_the_quota_is_quota_exceeded(
    client: GatewayClient, buffers: str
) -> None:
    # The stack's default quota is 1 GiB: 2 GiB cannot be charged.
    assert result_of(client.invoke(buffers, "alloc", [Value(i64=2 << 30)])) == -6
    assert result_of(client.invoke(buffers, "alloc", [Value(i64=1 << 20)])) == 1
