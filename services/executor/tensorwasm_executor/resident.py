"""A resident instance: one long-lived store and instance that keep their state across calls."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tensorwasm_executor.engine import CompiledModule
from tensorwasm_executor.errors import InstanceBusyError, ResidentGoneError
from tensorwasm_executor.guest_io import OutputSink
from tensorwasm_executor.outcomes import Outcome
from tensorwasm_executor.session import Session
from tensorwasm_executor.values import WasmValue

if TYPE_CHECKING:
    from tensorwasm_executor.sandbox import Sandbox


class Resident:
    """A long-lived instance: one store and instance that keep their state across calls.

    Calls run one at a time (a second caller waits, within its own deadline). Every
    call re-arms the deadline, the fuel and fresh output captures. `terminate()` stops a
    running call within about one epoch tick and closes the store once it has returned.
    """

    def __init__(self, sandbox: Sandbox, module: CompiledModule, session: Session) -> None:
        self.module = module
        self._sandbox = sandbox
        self._tick = sandbox.epoch_tick_seconds  # read once: calls are the hot path
        self._session: Session | None = session
        self._lock = threading.Lock()
        self._terminated = threading.Event()

    @property
    def terminated(self) -> bool:
        """Whether `terminate()` was called."""
        return self._terminated.is_set()

    def call(
        self,
        export: str,
        args: Sequence[WasmValue],
        *,
        timeout_seconds: float | None = None,
        max_output_bytes: int | None = None,
        fuel: int | None = None,
        on_output: OutputSink | None = None,
        cancel: threading.Event | None = None,
    ) -> Outcome:
        """Calls `export` on this instance; the arguments and limits are as `Sandbox.invoke`'s.

        Raises:
            ResidentGoneError: the instance was terminated.
            ExportNotFoundError, UnsupportedValueTypeError, ArgumentMismatchError: bad call.
            InvalidArgumentError: a bad limit, or no free turn on the instance before the
                call's deadline (reason INSTANCE_BUSY).
        """
        sandbox = self._sandbox
        info = self.module.checked_export(export, args)
        limits = sandbox.call_limits(timeout_seconds, max_output_bytes, fuel, None)
        if not self._lock.acquire(timeout=limits.timeout_seconds):
            raise InstanceBusyError(
                "another call held the instance for the whole deadline",
                metadata={"export": export},
            )
        try:
            session = self._session
            if session is None or self._terminated.is_set():
                raise ResidentGoneError("the instance was terminated")
            events = (self._terminated,) if cancel is None else (self._terminated, cancel)
            with sandbox.activity():
                session.begin(
                    limits, self._tick, fuel_metering=sandbox.fuel_metering,
                    on_output=on_output, events=events,
                )  # fmt: skip
                return session.outcome(*session.run(self.module, info, args))
        finally:
            self._lock.release()

    def terminate(self) -> None:
        """Stops a running call and frees the store (once no call runs). Idempotent."""
        self._terminated.set()
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()
