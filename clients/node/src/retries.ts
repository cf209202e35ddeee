/**
 * When a refused call is retried, and after how long: the gateway's RetryInfo first.
 *
 * Retried: RESOURCE_EXHAUSTED with a RetryInfo (refused before anything ran), after its
 * delay; UNAVAILABLE before the call started (no connection: `notSent`), after a doubling
 * back-off; UNAVAILABLE with a RetryInfo for idempotent calls only (reads, and a
 * StartInvocation with an idempotency key): the gateway relays an executor's failure that
 * may have come after the guest started, and an Invoke is never run twice by the client.
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

/** True when `error` is a refusal the gateway said (or the transport showed) is safe to retry. */
export function retryable(error: TensorWasmError, policy: RetryPolicy = {}, idempotent = false): boolean {
  const { maxDelayMs } = { ...DEFAULTS, ...policy };
  if (error.retryAfterMs !== undefined && error.retryAfterMs > maxDelayMs) {
    return false;
  }
  if (error instanceof RateLimitedError) {
    return true;
  }
  if (error instanceof UnavailableError) {
    return error.notSent || (idempotent && error.retryAfterMs !== undefined);
  }
  return false;
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
  idempotent = false,
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
      if (attempt >= maxAttempts || tooLate || !retryable(error, policy, idempotent) || signal?.aborted) {
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
