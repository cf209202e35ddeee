"""Deadlines end a call at the right epoch tick, counted by the test, not by a clock.

The sandbox's ticker is replaced by the test's own hand (`tick()`), so the number of ticks
a call survives is exact on any machine: a deadline enforced late (or early) by any factor
fails here, without a wall-clock assertion. Unwatched calls (the unary hot path) trap at a
tick count; watched ones (cancellable calls, resident instances) compare a clock at every
tick, and that clock is the test's too.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import wasmtime
from tensorwasm_executor.wasm import call_store
from tensorwasm_executor.wasm.sandbox import CompiledModule, Outcome, Sandbox

STREAM_WAT = Path(__file__).parents[3] / "fixtures" / "wat" / "stream.wat"
TICK_SECONDS = 1.0  # only converts deadlines to ticks: no real ticker runs
GENEROUS = 60.0  # turns a call that never ends into a failure
# How long a call that must go on is watched for an early end; a correct deadline never
# ends it early however short this is, so it only governs how likely a bug is seen.
STILL_RUNNING = 0.3


class HandTickedSandbox(Sandbox):
    """A sandbox whose epoch advances only when `tick()` is called."""

    def _run_ticker(self) -> None:
        self._stop.wait()

    def tick(self, count: int = 1) -> None:
        for _ in range(count):
            self.engine.increment_epoch()


@pytest.fixture
def sandbox() -> Iterator[HandTickedSandbox]:
    with HandTickedSandbox(epoch_tick_seconds=TICK_SECONDS) as box:
        yield box


@pytest.fixture
def stream(sandbox: HandTickedSandbox) -> CompiledModule:
    wasm = bytes(wasmtime.wat2wasm(STREAM_WAT.read_text()))
    return sandbox.compile(hashlib.sha256(wasm).hexdigest(), wasm)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class SpinningCall:
    """`spin_after_line` run on its own thread; `started` is set once the guest runs."""

    def __init__(
        self,
        sandbox: HandTickedSandbox,
        call: Callable[..., Outcome],
        clock: FakeClock | None = None,
    ) -> None:
        self.started = threading.Event()
        self._clock = clock
        self.outcome: list[Outcome] = []
        self._sandbox = sandbox
        self._thread = threading.Thread(
            target=lambda: self.outcome.append(call(on_output=self._on_output)), daemon=True
        )
        self._thread.start()
        assert self.started.wait(GENEROUS), "the guest did not start"

    def _on_output(self, name: str, data: bytes) -> None:
        self.started.set()

    def running_after_a_while(self) -> bool:
        self._thread.join(STILL_RUNNING)
        return self._thread.is_alive()

    def ended(self) -> bool:
        self._thread.join(GENEROUS)
        return not self._thread.is_alive()

    def release(self) -> None:
        """Ends a call a failed test left spinning (a deadline up to 1000 ticks or a day)."""
        while self._thread.is_alive():
            if self._clock is not None:
                self._clock.now += 86_400.0
            self._sandbox.tick(1000)
            self._thread.join(1.0)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("timeout_seconds", "ticks"),
    [(4 * TICK_SECONDS, 4), (3.5 * TICK_SECONDS, 4), (0.2 * TICK_SECONDS, 1)],
    ids=["whole-ticks", "rounded-up", "under-one-tick"],
)
def test_a_unary_call_ends_at_the_tick_its_deadline_names(
    sandbox: HandTickedSandbox, stream: CompiledModule, timeout_seconds: float, ticks: int
) -> None:
    spinning = SpinningCall(
        sandbox,
        lambda **kw: sandbox.invoke(
            stream, "spin_after_line", [], timeout_seconds=timeout_seconds, **kw
        ),
    )
    try:
        sandbox.tick(ticks - 1)
        assert spinning.running_after_a_while(), f"ended before tick {ticks}"
        sandbox.tick()
        assert spinning.ended(), f"still running after its deadline's {ticks} ticks"
    finally:
        spinning.release()
    failure = spinning.outcome[0].failure
    assert failure is not None
    assert (failure.reason, failure.trap_code) == ("DEADLINE_EXCEEDED", "INTERRUPT")


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    real = call_store.time
    monkeypatch.setattr(
        call_store,
        "time",
        SimpleNamespace(monotonic=fake.monotonic, perf_counter=real.perf_counter),
    )
    return fake


@pytest.mark.timeout(300)
def test_a_cancellable_call_ends_at_the_first_tick_past_its_deadline(
    sandbox: HandTickedSandbox, stream: CompiledModule, clock: FakeClock
) -> None:
    timeout = 5 * TICK_SECONDS
    spinning = SpinningCall(
        sandbox,
        lambda **kw: sandbox.invoke(
            stream, "spin_after_line", [], timeout_seconds=timeout, cancel=threading.Event(), **kw
        ),
        clock,
    )
    try:
        clock.now += timeout * 0.99
        sandbox.tick(3)
        assert spinning.running_after_a_while(), "ended before its deadline"
        clock.now += timeout * 0.01
        sandbox.tick()
        assert spinning.ended(), "still running at a tick past its deadline"
    finally:
        spinning.release()
    failure = spinning.outcome[0].failure
    assert failure is not None
    assert (failure.reason, failure.trap_code) == ("DEADLINE_EXCEEDED", "INTERRUPT")


@pytest.mark.timeout(300)
def test_a_resident_call_ends_at_the_first_tick_past_its_deadline(
    sandbox: HandTickedSandbox, stream: CompiledModule, clock: FakeClock
) -> None:
    resident, spawned = sandbox.spawn(stream)
    assert resident is not None and spawned.failure is None
    timeout = 5 * TICK_SECONDS
    spinning = SpinningCall(
        sandbox,
        lambda **kw: resident.call("spin_after_line", [], timeout_seconds=timeout, **kw),
        clock,
    )
    try:
        clock.now += timeout * 0.99
        sandbox.tick(3)
        assert spinning.running_after_a_while(), "ended before its deadline"
        clock.now += timeout * 0.01
        sandbox.tick()
        assert spinning.ended(), "still running at a tick past its deadline"
    finally:
        spinning.release()
        resident.terminate()
    failure = spinning.outcome[0].failure
    assert failure is not None
    assert failure.reason == "DEADLINE_EXCEEDED"
