"""When a failed call is retried, and after how long: the gateway's RetryInfo first.

A call is retried only when the gateway did nothing with it, or when doing it twice is
harmless:

- RESOURCE_EXHAUSTED with a RetryInfo (rate limits, concurrency caps, the auth-failure
  throttle, an executor's admission: refused before anything ran), after the delay;
- UNAVAILABLE before the call started: gRPC could not connect, so no byte was sent
  (`TensorWasmError.not_sent`), after an exponential back-off;
- UNAVAILABLE with a RetryInfo, for an idempotent call only (Get*, List*, a
  StartInvocation with a request id): the gateway relays an executor's failure that
  may have come after the guest started, and an Invoke is never run twice by the client.

Anything else is raised at once. tenacity runs the loop (blocking and asyncio alike).
"""

from __future__ import annotations

from dataclasses import dataclass

import tenacity

from tensorwasm_client.errors import RateLimitedError, TensorWasmError, UnavailableError


@dataclass(frozen=True)
class RetryPolicy:
    """How many times and for how long a refused call is tried again.

    Attributes:
        max_attempts: tries in all, the first included (1: never retry).
        max_delay_seconds: the longest single wait; a longer RetryInfo delay is not waited
            for (the error is raised, its `retry_after` says how long it would have been).
        total_seconds: no new attempt starts this long after the first.
        backoff_seconds: the first wait for an unanswered UNAVAILABLE, doubled each time.
    """

    max_attempts: int = 5
    max_delay_seconds: float = 30.0
    total_seconds: float = 120.0
    backoff_seconds: float = 0.1

    def retryable(self, error: BaseException, *, idempotent: bool = False) -> bool:
        """True when `error` is a refusal the gateway said (or gRPC showed) is safe to
        retry; `idempotent` calls may also be retried after an UNAVAILABLE with RetryInfo."""
        if not isinstance(error, TensorWasmError):
            return False
        if error.retry_after is not None and error.retry_after > self.max_delay_seconds:
            return False
        if isinstance(error, RateLimitedError):
            return True
        if isinstance(error, UnavailableError):
            return error.not_sent or (idempotent and error.retry_after is not None)
        return False

    def delay(self, error: BaseException | None, attempt: int) -> float:
        """Seconds to wait before attempt `attempt + 1`."""
        if isinstance(error, TensorWasmError) and error.retry_after is not None:
            return error.retry_after
        return min(self.backoff_seconds * 2.0 ** (attempt - 1), self.max_delay_seconds)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        return self.delay(error, int(state.attempt_number))

    def _options(self, idempotent: bool) -> dict[str, object]:
        return {
            "retry": tenacity.retry_if_exception(
                lambda error: self.retryable(error, idempotent=idempotent)
            ),
            "wait": self._wait,
            "stop": tenacity.stop_after_attempt(self.max_attempts)
            | tenacity.stop_after_delay(self.total_seconds),
            "reraise": True,
        }

    def blocking(self, *, idempotent: bool = False) -> tenacity.Retrying:
        """A tenacity loop for blocking calls."""
        return tenacity.Retrying(**self._options(idempotent))  # type: ignore[arg-type]

    def asynchronous(self, *, idempotent: bool = False) -> tenacity.AsyncRetrying:
        """A tenacity loop for asyncio calls."""
        return tenacity.AsyncRetrying(**self._options(idempotent))  # type: ignore[arg-type]


NO_RETRIES = RetryPolicy(max_attempts=1)
