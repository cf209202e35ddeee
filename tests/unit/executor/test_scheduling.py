"""Unit tests for tensorwasm_executor.scheduling: per-tenant queues served round robin, a
running share per tenant, cancellation of queued calls. No timing: events only."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
from tensorwasm_executor.scheduling import FairPool

WAIT = 30.0  # a bound for a condition that must hold, never a measured time


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # never leave a worker blocked


def _blocker(started: threading.Event, gate: threading.Event) -> Callable[[], str]:
    def run() -> str:
        started.set()
        assert gate.wait(WAIT)
        return "blocked"

    return run


def test_a_tenant_at_its_share_waits_while_another_tenant_runs(gate: threading.Event) -> None:
    pool = FairPool(4, 1)
    try:
        a_started = threading.Event()
        a_first = pool.submit("a", _blocker(a_started, gate))
        assert a_started.wait(WAIT)
        a_second = pool.submit("a", lambda: "a2")
        b_call = pool.submit("b", lambda: "b")
        # b is below its share: it runs on a free worker while a's second call waits.
        assert b_call.result(WAIT) == "b"
        assert not a_second.done()
        assert pool.running("a") == 1 and pool.queued("a") == 1
        gate.set()
        assert a_first.result(WAIT) == "blocked"
        assert a_second.result(WAIT) == "a2"
    finally:
        pool.shutdown()


def test_tenants_take_turns_for_a_single_worker(gate: threading.Event) -> None:
    pool = FairPool(1, 1)
    order: list[str] = []
    try:
        started = threading.Event()
        pool.submit("x", _blocker(started, gate))
        assert started.wait(WAIT)
        futures = [pool.submit(t, order.append, f"{t}{n}") for t, n in
                   [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("c", 1), ("b", 2)]]  # fmt: skip
        gate.set()
        for future in futures:
            future.result(WAIT)
    finally:
        pool.shutdown()
    # a flood of "a" does not hold back "b" and "c": one call each in turn.
    assert order == ["a1", "b1", "c1", "a2", "b2", "a3"]


def test_a_cancelled_queued_call_never_runs(gate: threading.Event) -> None:
    pool = FairPool(1, 1)
    ran = threading.Event()
    try:
        started = threading.Event()
        first = pool.submit("a", _blocker(started, gate))
        assert started.wait(WAIT)
        queued = pool.submit("b", ran.set)
        assert queued.cancel()
        after = pool.submit("b", lambda: "after")
        gate.set()
        assert first.result(WAIT) == "blocked"
        assert after.result(WAIT) == "after"
        assert not ran.is_set()
    finally:
        pool.shutdown()


def test_an_exception_reaches_the_future() -> None:
    pool = FairPool(2, 1)
    try:
        future = pool.submit("a", int, "not a number")
        with pytest.raises(ValueError):
            future.result(WAIT)
        assert pool.submit("a", int, "7").result(WAIT) == 7  # the worker survived
    finally:
        pool.shutdown()


def test_shutdown_cancels_queued_calls_and_refuses_new_ones(gate: threading.Event) -> None:
    pool = FairPool(1, 1)
    started = threading.Event()
    running = pool.submit("a", _blocker(started, gate))
    assert started.wait(WAIT)
    queued = pool.submit("b", lambda: "never")
    pool.shutdown()
    assert queued.cancelled()
    with pytest.raises(RuntimeError):
        pool.submit("b", lambda: "refused")
    gate.set()
    assert running.result(WAIT) == "blocked"


def test_a_tenant_view_is_a_standard_executor() -> None:
    pool = FairPool(2, 1)
    try:
        assert pool.executor_for("a").submit(sum, [1, 2, 3]).result(WAIT) == 6
    finally:
        pool.shutdown()


def test_shares_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FairPool(0, 1)
    with pytest.raises(ValueError):
        FairPool(2, 0)
