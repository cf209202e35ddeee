/**
 * Typed errors of the gateway, one class per status family, decoded from the
 * `google.rpc.Status` details (`grpc-status-details-bin`): the ErrorInfo reason, domain
 * and metadata, and the RetryInfo delay.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema, RetryInfoSchema } from "./gen/google/rpc/error_details_pb.js";

export const REQUEST_ID_HEADER = "x-request-id";

/** A failed call to the gateway. Match on `reason` (or the class), never on `message`. */
export class TensorWasmError extends Error {
  /** The gRPC status code's name, e.g. `NOT_FOUND`. */
  readonly code: string;
  /** The ErrorInfo reason, e.g. `FUNCTION_NOT_FOUND` (the code's name when none came). */
  readonly reason: string;
  /** The ErrorInfo metadata: the names, sizes and digests the error is about. */
  readonly metadata: Record<string, string>;
  /** The ErrorInfo domain, `<service>.tensorwasm.dev` ("" when none). */
  readonly domain: string;
  /** Milliseconds to wait before a retry is worth making (RetryInfo), or undefined. */
  readonly retryAfterMs: number | undefined;
  /** The call's `x-request-id` ("" when the gateway never saw the call). */
  readonly requestId: string;
  /** No connection could be made: no byte of the call was sent, the gateway cannot have acted. */
  readonly notSent: boolean;

  constructor(
    code: string,
    reason: string,
    message: string,
    init: {
      metadata?: Record<string, string>;
      domain?: string;
      retryAfterMs?: number;
      requestId?: string;
      notSent?: boolean;
      cause?: unknown;
    } = {},
  ) {
    super(`${code} ${reason}: ${message}`, { cause: init.cause });
    this.name = new.target.name;
    this.code = code;
    this.reason = reason;
    this.metadata = init.metadata ?? {};
    this.domain = init.domain ?? "";
    this.retryAfterMs = init.retryAfterMs;
    this.requestId = init.requestId ?? "";
    this.notSent = init.notSent ?? false;
  }
}

/** INVALID_ARGUMENT, OUT_OF_RANGE: a field or argument is malformed. */
export class InvalidArgumentError extends TensorWasmError {}
/** FAILED_PRECONDITION. */
export class FailedPreconditionError extends TensorWasmError {}
/** NOT_FOUND: no such function, instance or invocation for the tenant. */
export class NotFoundError extends TensorWasmError {}
/** ALREADY_EXISTS. */
export class AlreadyExistsError extends TensorWasmError {}
/** UNAUTHENTICATED: the bearer token is missing, malformed or unknown. */
export class UnauthenticatedError extends TensorWasmError {}
/** PERMISSION_DENIED: the token's scope does not cover the tenant or operation. */
export class PermissionDeniedError extends TensorWasmError {}
/** RESOURCE_EXHAUSTED with no time to come back (a size, a quota). */
export class ResourceExhaustedError extends TensorWasmError {}
/** RESOURCE_EXHAUSTED with a RetryInfo: a rate limit or cap refused the call before it started. */
export class RateLimitedError extends ResourceExhaustedError {}
/** UNAVAILABLE: the gateway or a dependency could not be reached. */
export class UnavailableError extends TensorWasmError {}
/** DEADLINE_EXCEEDED. */
export class DeadlineExceededError extends TensorWasmError {}
/** CANCELLED. */
export class CancelledError extends TensorWasmError {}
/** ABORTED. */
export class AbortedError extends TensorWasmError {}
/** UNIMPLEMENTED. */
export class UnimplementedError extends TensorWasmError {}
/** INTERNAL, UNKNOWN, DATA_LOSS. */
export class InternalError extends TensorWasmError {}

type ErrorClass = new (...args: ConstructorParameters<typeof TensorWasmError>) => TensorWasmError;

const FAMILIES = new Map<Code, ErrorClass>([
  [Code.InvalidArgument, InvalidArgumentError],
  [Code.OutOfRange, InvalidArgumentError],
  [Code.FailedPrecondition, FailedPreconditionError],
  [Code.NotFound, NotFoundError],
  [Code.AlreadyExists, AlreadyExistsError],
  [Code.Unauthenticated, UnauthenticatedError],
  [Code.PermissionDenied, PermissionDeniedError],
  [Code.ResourceExhausted, ResourceExhaustedError],
  [Code.Unavailable, UnavailableError],
  [Code.DeadlineExceeded, DeadlineExceededError],
  [Code.Canceled, CancelledError],
  [Code.Aborted, AbortedError],
  [Code.Unimplemented, UnimplementedError],
]);

/** gRPC's upper-case name of a Connect code (Code.NotFound -> NOT_FOUND). */
export function codeName(code: Code): string {
  return (Code[code] ?? "UNKNOWN").replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** The typed error for anything a call threw (a ConnectError, or what it wraps). */
export function fromConnectError(cause: unknown): TensorWasmError {
  if (cause instanceof TensorWasmError) {
    return cause;
  }
  const error = ConnectError.from(cause);
  const code = codeName(error.code).replace("CANCELED", "CANCELLED");
  let reason = code;
  let domain = "";
  let metadata: Record<string, string> = {};
  const [info] = error.findDetails(ErrorInfoSchema);
  if (info) {
    reason = info.reason;
    domain = info.domain;
    metadata = { ...info.metadata };
  }
  let retryAfterMs: number | undefined;
  const [retry] = error.findDetails(RetryInfoSchema);
  if (retry?.retryDelay) {
    retryAfterMs = Number(retry.retryDelay.seconds) * 1000 + retry.retryDelay.nanos / 1e6;
  }
  let family = FAMILIES.get(error.code) ?? InternalError;
  if (error.code === Code.ResourceExhausted && retryAfterMs !== undefined) {
    family = RateLimitedError;
  }
  return new family(code, reason, error.rawMessage, {
    metadata,
    domain,
    retryAfterMs,
    requestId: error.metadata.get(REQUEST_ID_HEADER) ?? "",
    notSent: error.code === Code.Unavailable && connectionFailed(error),
    cause: error,
  });
}

/** System errors that mean the connection was never made (so nothing was sent). */
const NOT_CONNECTED = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH"]);

function connectionFailed(error: unknown): boolean {
  for (let cause = error; cause instanceof Error; cause = cause.cause) {
    const code = (cause as { code?: unknown }).code;
    if (typeof code === "string" && NOT_CONNECTED.has(code)) return true;
  }
  return false;
}
