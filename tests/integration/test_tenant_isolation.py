"""One tenant's runaway guests never hold back another tenant's calls (real processes).

Tenant A keeps every one of its calls busy with guests that spin until a 300 s deadline
(the executor's longest; they are cancelled at teardown); tenant B's trivial call must
come back while all of A's guests are still spinning. On a
FIFO worker pool of `WORKERS` threads with a per-tenant cap of `WORKERS`, B's call would
wait behind A's deadlines; with per-tenant queues and a running share below the worker
count, it runs at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tensorwasm.common.v1.values_pb2 import Value
from tensorwasm_client.client import GatewayClient, InvocationStream

from .conftest import RunningStack

WORKERS = 4
RUNNING_SHARE = 2
WAIT = 120.0  # bounds a hang; never a measured time
# Far beyond anything B's calls take, even on a loaded machine: B must finish first.
SPIN_DEADLINE_SECONDS = 300


@pytest.fixture
def fair(launch_stack: Callable[..., RunningStack], tmp_path: Path) -> RunningStack:
    return launch_stack(
        tmp_path / "stack",
        {
            "TENSORWASM_EXECUTOR_WORKERS": str(WORKERS),
            "TENSORWASM_EXECUTOR_MAX_RUNNING_PER_TENANT": str(RUNNING_SHARE),
            # Every one of A's calls is admitted (queued or running): the flood is real.
            "TENSORWASM_EXECUTOR_MAX_IN_FLIGHT": str(4 * WORKERS),
            "TENSORWASM_EXECUTOR_MAX_IN_FLIGHT_PER_TENANT": str(WORKERS),
        },
    )


class Spinner:
    """One of tenant A's calls: a guest that writes a line, then spins until cancelled."""

    def __init__(self, client: GatewayClient) -> None:
        self.started = threading.Event()
        self.finished = threading.Event()
        self.call: InvocationStream = client.invoke_stream(
            "stream", "spin_after_line", timeout_seconds=SPIN_DEADLINE_SECONDS
        )
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        try:
            for event in self.call:
                if event.HasField("output"):
                    self.started.set()
        except Exception:  # cancelled at teardown
            pass
        finally:
            self.finished.set()

    def stop(self) -> None:
        self.call.cancel()
        self.finished.wait(WAIT)


@pytest.fixture
def spinners(fair: RunningStack, wasm: Callable[[str], bytes]) -> Iterator[list[Spinner]]:
    with fair.client("tenant-a") as flooder:
        flooder.create_function("stream", wasm("stream"))
        started = [Spinner(flooder) for _ in range(WORKERS)]
        try:
            yield started
        finally:
            for spinner in started:
                spinner.stop()


def test_a_flooding_tenant_does_not_hold_back_another(
    fair: RunningStack, spinners: list[Spinner], wasm: Callable[[str], bytes]
) -> None:
    # A's running share is busy spinning (the rest of A's calls wait in A's queue).
    _wait_until(lambda: sum(s.started.is_set() for s in spinners) >= RUNNING_SHARE)
    with fair.client("tenant-b") as light:
        light.create_function("add", wasm("add"))
        for _ in range(3):
            response = light.invoke("add", "add", [Value(i32=1), Value(i32=2)])
            assert list(response.outcome.success.results) == [Value(i32=3)]
    # B was served while A's guests were still spinning, not after their deadlines.
    assert not any(s.finished.is_set() for s in spinners)
    # ...and A never ran more than its share.
    assert sum(s.started.is_set() for s in spinners) == RUNNING_SHARE


def _wait_until(condition: Callable[[], bool]) -> None:
    give_up = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < give_up, "condition never held"
        time.sleep(0.01)
