/**
 * When a refused call is retried, and after how long: the gateway's RetryInfo first.
 *
 * Retried: RESOURCE_EXHAUSTED with a RetryInfo (the guard refused before the handler ran),
 * UNAVAILABLE with a RetryInfo, and UNAVAILABLE that the gateway never answered (no
 * `x-request-id` came back; the gateway returns one on every call it sees). Anything
 * else is thrown at once: an Invoke is not idempotent.
 */
import { RateLimitedError, TensorWasmError, UnavailableError } from "./errors.js";

export interface RetryPolicy {
  /** Tries in all, the first included (1: never retry). Default 5. */
  maxAttempts?: number;
  /** The longest single wait; a longer RetryInfo is thrown instead. Default 30 000 ms. */
  maxDelayMs?: number;
  /** No new attempt starts this long after the first. Default 120 000 ms. */
  totalMs?: number;
  /** First back-off for an unanswered UNAVAILABLE, doubled each time. Default 100 ms. */
  backoffMs?: number;
}

export const NO_RETRIES: RetryPolicy = { maxAttempts: 1 };

const DEFAULTS: Required<RetryPolicy> = {
  maxAttempts: 5,
  maxDelayMs: 30_000,
  totalMs: 120_000,
  backoffMs: 100,
};

/** True when `error` is a refusal the gateway said (or showed) is safe to retry. */
export function retryable(error: TensorWasmError, policy: RetryPolicy = {}): boolean {
  const { maxDelayMs } = { ...DEFAULTS, ...policy };
  if (error.retryAfterMs !== undefined) {
    return (
      error.retryAfterMs <= maxDelayMs &&
      (error instanceof RateLimitedError || error instanceof UnavailableError)
    );
  }
  return error instanceof UnavailableError && error.requestId === "";
}

/** Milliseconds to wait after failed attempt number `attempt` (1-based). */
export function retryDelayMs(error: TensorWasmError, attempt: number, policy: RetryPolicy = {}): number {
  const { backoffMs, maxDelayMs } = { ...DEFAULTS, ...policy };
  if (error.retryAfterMs !== undefined) {
    return error.retryAfterMs;
  }
  return Math.min(backoffMs * 2 ** (attempt - 1), maxDelayMs);
}

/** Runs `call` until it succeeds or fails in a way that is not retried. */
export async function withRetries<T>(
  call: () => Promise<T>,
  toError: (cause: unknown) => TensorWasmError,
  policy: RetryPolicy = {},
  signal?: AbortSignal,
): Promise<T> {
  const { maxAttempts, totalMs } = { ...DEFAULTS, ...policy };
  const started = Date.now();
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (cause) {
      const error = toError(cause);
      const delay = retryDelayMs(error, attempt, policy);
      const tooLate = Date.now() + delay - started > totalMs;
      if (attempt >= maxAttempts || tooLate || !retryable(error, policy) || signal?.aborted) {
        throw error;
      }
      await sleep(delay, signal);
    }
  }
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}
