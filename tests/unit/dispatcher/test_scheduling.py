"""FairScheduler: per-tenant queues served by deficit round robin, never FIFO across tenants."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from tensorwasm_dispatcher.scheduling import FairScheduler


@pytest.fixture
def gated() -> Iterator[tuple[FairScheduler, threading.Event, list[str]]]:
    """One worker, held by a first job until the gate opens; `served` records the order."""
    scheduler = FairScheduler(1, quantum=4)
    gate = threading.Event()
    started = threading.Event()
    served: list[str] = []

    def hold() -> None:
        started.set()
        gate.wait(10)

    scheduler.submit("warmup", 1, hold)
    assert started.wait(10)
    yield scheduler, gate, served
    gate.set()
    scheduler.shutdown()


def record(served: list[str], label: str) -> Callable[[], str]:
    def work() -> str:
        served.append(label)
        return label

    return work


def test_a_light_tenant_is_served_before_a_flood_drains(
    gated: tuple[FairScheduler, threading.Event, list[str]],
) -> None:
    scheduler, gate, served = gated
    flood = [scheduler.submit("flood", 4, record(served, f"flood-{i}")) for i in range(20)]
    light = [scheduler.submit("light", 1, record(served, f"light-{i}")) for i in range(3)]
    assert scheduler.queued("flood") == 20
    assert scheduler.queued("light") == 3
    assert scheduler.queued() == 23
    gate.set()
    assert [f.result(10) for f in light] == ["light-0", "light-1", "light-2"]
    assert [f.result(10) for f in flood][-1] == "flood-19"
    # FIFO would serve the 20 flood batches first; by turns, the light tenant's three
    # (cost 1 each, within one quantum) run before more than one flood batch (cost 4).
    assert served.index("light-2") <= 3
    assert served.count("light-0") == 1 and len(served) == 23
    assert scheduler.queued() == 0


def test_costs_share_turns_by_deficit(
    gated: tuple[FairScheduler, threading.Event, list[str]],
) -> None:
    scheduler, gate, served = gated
    heavy = [scheduler.submit("heavy", 8, record(served, "H")) for _ in range(4)]
    small = [scheduler.submit("small", 2, record(served, "s")) for _ in range(8)]
    gate.set()
    for future in heavy + small:
        future.result(10)
    # Each turn earns 4: heavy (cost 8) runs every second turn, small (cost 2) twice a
    # turn; so both get the same cost share while both have work queued.
    assert "".join(served) == "ssssHssssHHH"


def test_one_tenant_alone_runs_everything_in_order() -> None:
    scheduler = FairScheduler(2, quantum=1)
    try:
        results = [scheduler.submit("only", 50, lambda i=i: i * i).result(10) for i in range(5)]
    finally:
        scheduler.shutdown()
    assert results == [0, 1, 4, 9, 16]


def test_an_exception_reaches_the_future() -> None:
    scheduler = FairScheduler(1, quantum=1)

    def fail() -> None:
        raise ValueError("boom")

    try:
        future = scheduler.submit("t", 1, fail)
        with pytest.raises(ValueError, match="boom"):
            future.result(10)
    finally:
        scheduler.shutdown()


def test_shutdown_cancels_queued_jobs_and_refuses_new_ones(
    gated: tuple[FairScheduler, threading.Event, list[str]],
) -> None:
    scheduler, gate, served = gated
    queued = scheduler.submit("t", 1, record(served, "never"))
    stopper = threading.Thread(target=scheduler.shutdown)
    stopper.start()
    gate.set()
    stopper.join(10)
    assert queued.cancelled()
    assert served == []
    with pytest.raises(RuntimeError):
        scheduler.submit("t", 1, record(served, "late"))


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        FairScheduler(0, quantum=1)
    with pytest.raises(ValueError):
        FairScheduler(1, quantum=0)
