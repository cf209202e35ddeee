"""The executor's memory cap holds through the whole stack, whatever a call asks for."""

from __future__ import annotations

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

        def grow(pages: int) -> int:
            outcome = client.invoke(
                "grow", "grow", [Value(i32=pages)], max_memory_bytes=CALL_ASKS
            ).outcome
            assert outcome.WhichOneof("result") == "success", outcome
            result: int = outcome.success.results[0].i32
            return result

        # 1 + 16 pages (1.06 MiB) fit the executor's 2 MiB; 1 + 63 pages (4 MiB) fit the
        # call's 8 MiB but not the executor's cap, so memory.grow fails with -1.
        assert grow(16) == 1
        assert grow(63) == -1
