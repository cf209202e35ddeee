"""Sending one store's GPU batches: the call's deadline, retries while busy, session end.

The sender owns the dispatcher-side session of one `CudaSession`: its id, whether a
request may have opened it, and ending it when the store is done, in the transport's
background when the transport takes that (`BackgroundTransport`), else waiting.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from tensorwasm_common.gpu_abi import AbiError, AbiFailure
from tensorwasm_common.gpu_batch import Batch, BatchResult

from tensorwasm_executor.gpu.batch import BackgroundTransport, Transport, TransportError

_log = logging.getLogger(__name__)

# How long the session's last request may take once the call is over (ending it only).
CLOSE_TIMEOUT_SECONDS = 2.0


class BatchSender:
    """Sends one session's requests before the current call's deadline."""

    def __init__(
        self,
        transport: Transport,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.session_id = secrets.token_hex(16)
        self.requests_sent = 0
        # The end of the current call (on `clock`); requests are not sent past it.
        self.deadline = clock() + CLOSE_TIMEOUT_SECONDS
        self._transport = transport
        self._clock = clock
        self._sleep = sleep
        self._opened = False  # a request was sent: the dispatcher may hold the session

    def remaining_seconds(self) -> float:
        """Time left before the current call's deadline (0 when it has passed)."""
        return max(0.0, self.deadline - self._clock())

    def send(self, request: Batch) -> BatchResult:
        """Sends one request, coming back after the dispatcher's delay while it is busy.

        Raises:
            AbiFailure: it did not run before the call's deadline, or cannot run.
        """
        self._opened = True
        try:
            while True:
                remaining = self.deadline - self._clock()
                if remaining <= 0:
                    raise AbiFailure(
                        AbiError.NOT_AVAILABLE, "the call's deadline passed before the GPU ran"
                    )
                try:
                    self.requests_sent += 1
                    reply = self._transport.execute(request, remaining)
                except TransportError as exc:
                    delay = exc.retry_after_seconds
                    if delay is None or delay >= self.deadline - self._clock():
                        raise AbiFailure(exc.code, exc.message) from None
                    self._sleep(delay)
                    continue
                if len(reply.results) != len(request.commands):
                    raise AbiFailure(AbiError.INTERNAL, "the dispatcher's reply does not match")
                return reply
        finally:
            if request.end_session:
                self._opened = False

    def end_session(self, deadline: float | None = None) -> None:
        """Ends the dispatcher's session if one may be open: in the transport's background
        when it takes the request, else here, waiting until `deadline` at most (None:
        `CLOSE_TIMEOUT_SECONDS` from now)."""
        if not self._opened:
            return
        request = Batch(self.session_id, (), (), end_session=True)
        if isinstance(self._transport, BackgroundTransport) and (
            self._transport.end_session_later(request, CLOSE_TIMEOUT_SECONDS)
        ):
            self._opened = False
            self.requests_sent += 1
            return
        self.deadline = self._clock() + CLOSE_TIMEOUT_SECONDS if deadline is None else deadline
        try:
            self.send(request)
        except AbiFailure as failure:  # the dispatcher expires it after its idle TTL
            _log.info("ending a GPU session failed: %s", failure.message)
