"""The executor's memory cap holds through the whole stack, whatever a call asks for."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tensorwasm.common.v1.values_pb2 import Value

pytestmark = pytest.mark.integration

EXECUTOR_CAP = 2 << 20  # TENSORWASM_EXECUTOR_MAX_MEMORY_BYTES
CALL_ASKS = 8 << 20  # the call's max_memory_bytes: more than the executor allows


def test_a_call_cannot_raise_the_executors_memory_cap(
    launch_stack: Callable[..., Any], tmp_path: Path, wasm: Callable[[str], bytes]
) -> None:
    stack = launch_stack(tmp_path, {"TENSORWASM_EXECUTOR_MAX_MEMORY_BYTES": str(EXECUTOR_CAP)})
    with stack.client("memory-cap") as client:
        client.create_function("grow", wasm("grow"))

        def grow(pages: int) -> tuple[int, bool]:
            outcome = client.invoke(
                "grow", "grow", [Value(i32=pages)], max_memory_bytes=CALL_ASKS
            ).outcome
            assert outcome.WhichOneof("result") == "success", outcome
            result: int = outcome.success.results[0].i32
            return result, outcome.memory_cap_hit

        # 1 + 16 pages (1.06 MiB) fit the executor's 2 MiB; 1 + 63 pages (4 MiB) fit the
        # call's 8 MiB but not the executor's cap, so memory.grow fails with -1, and the
        # outcome says the cap was hit.
        assert grow(16) == (1, False)
        assert grow(63) == (-1, True)
    # The executor counts it (the guest's -1 is counted before the reply leaves).
    metrics = scrape(stack.services["executor"].metrics_address)
    assert 'tensorwasm_executor_cap_hits_total{kind="memory"} 1.0' in metrics


def scrape(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        body: str = response.read().decode()
    return body
