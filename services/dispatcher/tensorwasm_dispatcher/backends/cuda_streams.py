"""The cuda backend's session streams: an event pair per launch, and the one wait per batch,
bounded by the call's deadline (the watchdog).

A session's stream is non-blocking (it never waits for, nor is waited for by, the legacy
NULL stream). A launch records a pair of events around itself and is not waited for;
`finish` polls `cuStreamQuery` until the stream's work is done or the deadline passes,
then sums the launches' event times (the tenant's GPU time). A stream still running at
the deadline is kept as hung: its kernel cannot be stopped inside the shared context, so
the stream is destroyed, and module unloads are deferred, until the device reports it
done (`reap`). A worker process per tenant with its own context (the isolation issue)
would end such a kernel by ending the process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from tensorwasm_dispatcher.backends.base import DeadlineExceeded, Stream

_NOT_READY = 600  # CUDA_ERROR_NOT_READY: cuStreamQuery's "still running"
# How often `finish` asks whether the stream is done: from this, doubling, to the cap.
_POLL_FIRST_SECONDS = 50e-6
_POLL_MAX_SECONDS = 2e-3


class CudaStream(Stream):
    """A session's stream: its event pairs, the host bytes its queued copies read."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.events: list[tuple[Any, Any]] = []  # (start, end) pairs, reused batch to batch
        self.launched = 0  # pairs recorded since the last finish
        self.keep: list[Any] = []  # host bytes queued copies read, until the stream is done
        self.hung = False


class Streams:
    """Opens, waits for and releases session streams; keeps the hung ones (thread-safe)."""

    def __init__(self, driver: Any, call: Callable[[Any], tuple[Any, ...]]) -> None:
        self._driver = driver
        self._call = call
        self._lock = threading.Lock()
        self._hung: list[CudaStream] = []  # streams past a deadline, until they finish
        self._deferred_unloads: list[Any] = []

    def open(self) -> CudaStream:
        """A new non-blocking stream (the context must be current)."""
        self.reap()
        flags = self._driver.CUstream_flags.CU_STREAM_NON_BLOCKING
        (stream,) = self._call(self._driver.cuStreamCreate(int(flags)))
        return CudaStream(stream)

    def close(self, cuda_stream: CudaStream) -> None:
        """Releases a stream without waiting for it (a hung one when it is done)."""
        if not cuda_stream.hung:
            self._destroy(cuda_stream)

    def _destroy(self, cuda_stream: CudaStream) -> None:
        for start, end in cuda_stream.events:
            self._call(self._driver.cuEventDestroy(start))
            self._call(self._driver.cuEventDestroy(end))
        cuda_stream.events.clear()
        # The driver releases a stream whose queued frees have not run yet once they have.
        self._call(self._driver.cuStreamDestroy(cuda_stream.stream))

    def event_pair(self, cuda_stream: CudaStream) -> tuple[Any, Any]:
        """The events around the stream's next launch (created on first need)."""
        if cuda_stream.launched == len(cuda_stream.events):
            default = self._driver.CUevent_flags.CU_EVENT_DEFAULT
            (start,) = self._call(self._driver.cuEventCreate(int(default)))
            (end,) = self._call(self._driver.cuEventCreate(int(default)))
            cuda_stream.events.append((start, end))
        return cuda_stream.events[cuda_stream.launched]

    def finish(self, cuda_stream: CudaStream, deadline: float | None) -> float:
        """Waits for the stream's work; returns the seconds its launches ran.

        Raises:
            DeadlineExceeded: still running at `deadline` (the stream is now hung).
            CudaCallError: the work failed.
        """
        launched, cuda_stream.launched = cuda_stream.launched, 0
        try:
            self._wait(cuda_stream, deadline)
            seconds = 0.0
            for start, end in cuda_stream.events[:launched]:
                (milliseconds,) = self._call(self._driver.cuEventElapsedTime(start, end))
                seconds += float(milliseconds) / 1000.0
        finally:
            if not cuda_stream.hung:
                cuda_stream.keep.clear()
        return seconds

    def _wait(self, cuda_stream: CudaStream, deadline: float | None) -> None:
        pause = _POLL_FIRST_SECONDS
        while True:
            (status, *_) = _as_tuple(self._driver.cuStreamQuery(cuda_stream.stream))
            if int(status) != _NOT_READY:
                self._call(status)
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                cuda_stream.hung = True
                with self._lock:
                    self._hung.append(cuda_stream)
                raise DeadlineExceeded(
                    "the session's kernels were still running at the call's deadline; the "
                    "session is ended (its kernels, buffers and stream are released when the "
                    "device is done with them)"
                )
            time.sleep(pause if deadline is None else min(pause, deadline - now))
            pause = min(pause * 2, _POLL_MAX_SECONDS)

    def defer_unload(self, module: Any) -> bool:
        """Keeps `module` for `reap` while a stream is hung (it may run the module's
        kernel); False: nothing is hung, unload it now."""
        with self._lock:
            if not self._hung:
                return False
            self._deferred_unloads.append(module)
            return True

    def reap(self) -> None:
        """Releases the hung streams the device is done with, then the deferred modules."""
        with self._lock:
            hung = list(self._hung)
        for cuda_stream in hung:
            (status, *_) = _as_tuple(self._driver.cuStreamQuery(cuda_stream.stream))
            if int(status) == _NOT_READY:
                continue
            with self._lock:
                self._hung.remove(cuda_stream)
            cuda_stream.hung = False
            self._destroy(cuda_stream)
        with self._lock:
            if self._hung:
                return
            modules, self._deferred_unloads = self._deferred_unloads, []
        for module in modules:
            self._call(self._driver.cuModuleUnload(module))

    def hung_count(self) -> int:
        """How many streams are still running past their deadline (after a `reap`)."""
        self.reap()
        with self._lock:
            return len(self._hung)


def _as_tuple(result: Any) -> tuple[Any, ...]:
    return result if isinstance(result, tuple) else (result,)
