"""What a guest sees of WASI beyond its exports: argv/env/directory options, captured stdio."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

_log = logging.getLogger(__name__)

# Receives guest output as it is written: ("stdout" | "stderr", bytes), on the guest's thread.
OutputSink = Callable[[str, bytes], None]


@dataclass(frozen=True)
class WasiOptions:
    """What a guest sees of WASI beyond stdio: argv, environment, one read-only directory.

    `read_only_dir` is a host directory the caller has already resolved and authorised;
    the guest sees it, read-only, at `guest_dir`. Without it the guest has no filesystem.
    """

    argv: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    read_only_dir: str | None = None
    guest_dir: str = "/data"


NO_WASI_OPTIONS = WasiOptions()


class OutputCapture:
    """A WASI output sink that keeps the first `limit` bytes and flags the rest.

    With a `sink`, the kept bytes are handed to it as they are written instead of
    being buffered (so `data` stays empty); the cap and the flag work the same.

    Every guest write is a call into Python on the guest's thread, holding the GIL the
    executor's event loop needs too: a guest that keeps writing past its cap (output
    nobody will see) would slow every other tenant's calls. So each write past a cap it
    ran into first sleeps `PAST_CAP_PAUSE_SECONDS` (releasing the GIL); the guest still
    sees full writes and its deadline still ends it. A limit of 0 (init capture, whose
    output is discarded by design) drops writes without a pause, so a chatty init is not
    slowed towards its deadline.
    """

    PAST_CAP_PAUSE_SECONDS = 0.001

    def __init__(
        self,
        limit: int,
        stream: str = "",
        sink: OutputSink | None = None,
        *,
        pause: Callable[[float], None] = time.sleep,
    ) -> None:
        self.data = bytearray()
        self.limit = limit
        self.truncated = False
        self._stream = stream
        self._sink = sink
        self._written = 0
        self._pause = pause

    def write(self, chunk: bytes) -> int:
        """Keeps (or passes on) what fits under the cap; returns the full length."""
        room = self.limit - self._written
        if room <= 0 and chunk:
            self.truncated = True
            if self.limit > 0:  # a cap the guest ran into; 0 is output discarded by design
                self._pause(self.PAST_CAP_PAUSE_SECONDS)
            return len(chunk)
        if len(chunk) > room:
            self.truncated = True
        if room > 0 and chunk:
            kept = chunk[:room]
            self._written += len(kept)
            if self._sink is None:
                self.data += kept
            else:
                try:
                    self._sink(self._stream, kept)
                except Exception:  # a failing consumer must not fail the guest's write
                    _log.warning("output sink failed", exc_info=True)
        return len(chunk)  # the guest always sees a full write
