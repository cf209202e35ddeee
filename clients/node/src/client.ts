/**
 * The gateway client: every GatewayService RPC over gRPC (Connect for Node.js, HTTP/2),
 * with the bearer token, tenant and request id as metadata, TLS, typed errors and
 * RetryInfo retries.
 */
import type { MessageInitShape } from "@bufbuild/protobuf";
import { type DurationSchema, durationFromMs } from "@bufbuild/protobuf/wkt";
import { type Client, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { blake3 } from "@noble/hashes/blake3.js";
import { bytesToHex } from "@noble/hashes/utils.js";
import type { InvocationLimitsSchema } from "./gen/tensorwasm/common/v1/invocation_pb.js";
import type { Value } from "./gen/tensorwasm/common/v1/values_pb.js";
import {
  type CallInstanceResponse,
  type CreateInstanceResponse,
  type Function as DeployedFunction,
  type FunctionConfigSchema,
  GatewayService,
  type Instance,
  type Invocation,
  InvocationState,
  type InvokeResponse,
  type InvokeStreamResponse,
  type ListFunctionsResponse,
  type ListInvocationsResponse,
  type UploadFunctionRequestSchema,
} from "./gen/tensorwasm/gateway/v1/gateway_service_pb.js";
import { fromConnectError, TensorWasmError } from "./errors.js";
import { type RetryPolicy, withRetries } from "./retries.js";

export const TENANT_HEADER = "x-tensorwasm-tenant";
export const AUTHORIZATION_HEADER = "authorization";
/** Room for the gateway's largest module (256 MiB at most) and the rest of the message. */
const MAX_MESSAGE_BYTES = 257 * 1024 * 1024;

export interface GatewayClientOptions {
  /** `host:port` or a URL (`http://host:port`, `https://host:port`). Default localhost:50051. */
  address?: string;
  /** Sent as `x-tensorwasm-tenant`; absent: the token's only tenant, else `default`. */
  tenant?: string;
  /** Sent as `authorization: Bearer <token>`. */
  token?: string;
  /** TLS: `true` for the system roots, or the PEM roots that sign the gateway. */
  tls?: boolean | { ca: string | Buffer };
  /** When refused calls are retried (default: 5 attempts, RetryInfo delays). */
  retry?: RetryPolicy;
  /** The deadline of a call without its own, in ms (default 60 000). */
  timeoutMs?: number;
}

/** Limits of one call; zero or absent fields take the function's defaults. */
export interface CallLimits {
  timeoutMs?: number;
  fuel?: bigint;
  maxMemoryBytes?: bigint;
}

export interface InvokeOptions extends CallLimits {
  stdin?: Uint8Array;
  /** Sent as `x-request-id` (returned by the gateway, written in its logs). */
  requestId?: string;
  signal?: AbortSignal;
}

export class GatewayClient {
  /** The generated Connect client, for anything this wrapper does not cover. */
  readonly raw: Client<typeof GatewayService>;
  private readonly retry: RetryPolicy;
  private readonly timeoutMs: number;

  constructor(options: GatewayClientOptions = {}) {
    const tls = options.tls ?? false;
    const address = options.address ?? "localhost:50051";
    const scheme = tls ? "https" : "http";
    const baseUrl = address.includes("://") ? address : `${scheme}://${address}`;
    const headers: Interceptor = (next) => async (request) => {
      if (options.tenant) request.header.set(TENANT_HEADER, options.tenant);
      if (options.token) request.header.set(AUTHORIZATION_HEADER, `Bearer ${options.token}`);
      return next(request);
    };
    const transport = createGrpcTransport({
      baseUrl,
      interceptors: [headers],
      readMaxBytes: MAX_MESSAGE_BYTES,
      writeMaxBytes: MAX_MESSAGE_BYTES,
      nodeOptions: typeof tls === "object" ? { ca: tls.ca } : {},
    });
    this.raw = createClient(GatewayService, transport);
    this.retry = options.retry ?? {};
    this.timeoutMs = options.timeoutMs ?? 60_000;
  }

  private call<T>(run: () => Promise<T>, signal?: AbortSignal, idempotent = false): Promise<T> {
    return withRetries(run, fromConnectError, this.retry, signal, idempotent);
  }

  /** A call that changes nothing (retried after an UNAVAILABLE with RetryInfo too). */
  private read<T>(run: () => Promise<T>): Promise<T> {
    return this.call(run, undefined, true);
  }

  private callOptions(timeoutMs?: number, requestId?: string, signal?: AbortSignal) {
    const headers: Record<string, string> = requestId ? { "x-request-id": requestId } : {};
    return { timeoutMs: timeoutMs ?? this.timeoutMs, headers, signal };
  }

  /** Deploys a module as `functions/{functionId}`. */
  async createFunction(
    functionId: string,
    wasm: Uint8Array,
    config?: MessageInitShape<typeof FunctionConfigSchema>,
  ): Promise<DeployedFunction> {
    const response = await this.call(() =>
      this.raw.createFunction({ functionId, wasm, config }, this.callOptions(300_000)),
    );
    return required(response.function, "function");
  }

  /**
   * Deploys a module streamed in chunks (UploadFunction): for modules of any size up to
   * the gateway's module cap. The BLAKE3 digest is computed as the chunks go out and sent
   * in the trailer; `onProgress(sentBytes, totalBytes)` is called after each chunk.
   */
  async uploadFunction(
    functionId: string,
    wasm: Uint8Array,
    config?: MessageInitShape<typeof FunctionConfigSchema>,
    options: { chunkBytes?: number; onProgress?: (sent: number, total: number) => void } = {},
  ): Promise<DeployedFunction> {
    const chunkBytes = options.chunkBytes ?? 1 << 20;
    async function* messages(): AsyncGenerator<MessageInitShape<typeof UploadFunctionRequestSchema>> {
      const header = { functionId, config, moduleSizeBytes: BigInt(wasm.length) };
      yield { part: { case: "header", value: header } };
      const hasher = blake3.create();
      for (let start = 0; start < wasm.length; start += chunkBytes) {
        const chunk = wasm.subarray(start, start + chunkBytes);
        hasher.update(chunk);
        yield { part: { case: "chunk", value: chunk } };
        options.onProgress?.(start + chunk.length, wasm.length);
      }
      yield { part: { case: "trailer", value: { moduleDigest: bytesToHex(hasher.digest()) } } };
    }
    const response = await this.call(() =>
      this.raw.uploadFunction(messages(), this.callOptions(300_000)),
    );
    return required(response.function, "function");
  }

  /** One function (`functions/{id}` or the bare id). */
  async getFunction(functionId: string): Promise<DeployedFunction> {
    const name = functionName(functionId);
    const response = await this.read(() => this.raw.getFunction({ name }, this.callOptions()));
    return required(response.function, "function");
  }

  /** One page of the tenant's functions, ordered by name. */
  listFunctionsPage(pageSize = 100, pageToken = ""): Promise<ListFunctionsResponse> {
    return this.read(() => this.raw.listFunctions({ pageSize, pageToken }, this.callOptions()));
  }

  /** Every function of the tenant, page after page. */
  async *listFunctions(pageSize = 100): AsyncGenerator<DeployedFunction> {
    let token = "";
    do {
      const page = await this.listFunctionsPage(pageSize, token);
      yield* page.functions;
      token = page.nextPageToken;
    } while (token);
  }

  /** Deletes a function. */
  async deleteFunction(functionId: string): Promise<void> {
    const name = functionName(functionId);
    await this.call(() => this.raw.deleteFunction({ name }, this.callOptions()));
  }

  /** Calls an export; a guest trap is `response.outcome.result.case === "failure"`. */
  invoke(
    functionId: string,
    exportName: string,
    args: Value[] = [],
    options: InvokeOptions = {},
  ): Promise<InvokeResponse> {
    const request = invokeRequest(functionId, exportName, args, options);
    const call = this.callOptions(rpcTimeoutMs(options.timeoutMs), options.requestId, options.signal);
    return this.call(() => this.raw.invoke(request, call), options.signal);
  }

  /**
   * Calls an export and yields its events as the guest runs: output chunks, then the
   * outcome. A refusal comes before the first event and is retried like a unary call;
   * breaking out of the loop (or aborting `options.signal`) cancels the call.
   */
  async *invokeStream(
    functionId: string,
    exportName: string,
    args: Value[] = [],
    options: InvokeOptions = {},
  ): AsyncGenerator<InvokeStreamResponse> {
    const invocation = invokeRequest(functionId, exportName, args, options);
    const abort = new AbortController();
    const forward = () => abort.abort();
    options.signal?.addEventListener("abort", forward, { once: true });
    try {
      const call = this.callOptions(rpcTimeoutMs(options.timeoutMs), options.requestId, abort.signal);
      let events: AsyncIterator<InvokeStreamResponse> | undefined;
      const first = await this.call(async () => {
        events = this.raw.invokeStream({ invocation }, call)[Symbol.asyncIterator]();
        return events.next();
      }, abort.signal);
      if (first.done || !events) return;
      yield first.value;
      for (;;) {
        let step: IteratorResult<InvokeStreamResponse>;
        try {
          step = await events.next();
        } catch (cause) {
          throw fromConnectError(cause);
        }
        if (step.done) return;
        yield step.value;
      }
    } finally {
      options.signal?.removeEventListener("abort", forward);
      abort.abort();
    }
  }

  /** Starts an invocation in the background; returns it (PENDING) at once. */
  async startInvocation(
    functionId: string,
    exportName: string,
    args: Value[] = [],
    options: InvokeOptions & { idempotencyKey?: string } = {},
  ): Promise<Invocation> {
    const invocation = invokeRequest(functionId, exportName, args, options);
    const requestId = options.idempotencyKey ?? "";
    const response = await this.call(
      () => this.raw.startInvocation({ invocation, requestId }, this.callOptions()),
      undefined,
      requestId !== "",
    );
    return required(response.invocation, "invocation");
  }

  /** One invocation, with its outcome once it has finished. */
  async getInvocation(invocation: string): Promise<Invocation> {
    const name = prefixed("invocations/", invocation);
    const response = await this.read(() => this.raw.getInvocation({ name }, this.callOptions()));
    return required(response.invocation, "invocation");
  }

  /** One page of the tenant's invocations, oldest first. */
  listInvocationsPage(pageSize = 100, pageToken = ""): Promise<ListInvocationsResponse> {
    return this.read(() => this.raw.listInvocations({ pageSize, pageToken }, this.callOptions()));
  }

  /** Every retained invocation of the tenant. */
  async *listInvocations(pageSize = 100): AsyncGenerator<Invocation> {
    let token = "";
    do {
      const page = await this.listInvocationsPage(pageSize, token);
      yield* page.invocations;
      token = page.nextPageToken;
    } while (token);
  }

  /** Polls an invocation until it has finished; throws a TimeoutError-named Error past `timeoutMs`. */
  async waitInvocation(invocation: string, timeoutMs = 60_000): Promise<Invocation> {
    const deadline = Date.now() + timeoutMs;
    let delay = 20;
    for (;;) {
      const current = await this.getInvocation(invocation);
      if (
        current.state === InvocationState.SUCCEEDED ||
        current.state === InvocationState.FAILED
      ) {
        return current;
      }
      if (Date.now() > deadline) {
        const error = new Error(`${current.name} has not finished`);
        error.name = "TimeoutError";
        throw error;
      }
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 500);
    }
  }

  /** Starts a live instance; `instance` is unset when its start function failed. */
  createInstance(
    functionId: string,
    options: CallLimits & { stdin?: Uint8Array; idleTtlMs?: number } = {},
  ): Promise<CreateInstanceResponse> {
    const request = {
      function: functionName(functionId),
      stdin: options.stdin ?? new Uint8Array(),
      limits: limits(options),
      idleTtl: options.idleTtlMs ? durationFromMs(options.idleTtlMs) : undefined,
    };
    return this.call(() =>
      this.raw.createInstance(request, this.callOptions(rpcTimeoutMs(options.timeoutMs))),
    );
  }

  /** One live instance. */
  async getInstance(instance: string): Promise<Instance> {
    const name = prefixed("instances/", instance);
    const response = await this.read(() => this.raw.getInstance({ name }, this.callOptions()));
    return required(response.instance, "instance");
  }

  /** Calls an export of a live instance. */
  callInstance(
    instance: string,
    exportName: string,
    args: Value[] = [],
    options: CallLimits = {},
  ): Promise<CallInstanceResponse> {
    const request = {
      name: prefixed("instances/", instance),
      exportName,
      args,
      limits: limits(options),
    };
    return this.call(() =>
      this.raw.callInstance(request, this.callOptions(rpcTimeoutMs(options.timeoutMs))),
    );
  }

  /** Terminates a live instance. */
  async deleteInstance(instance: string): Promise<void> {
    const name = prefixed("instances/", instance);
    await this.call(() => this.raw.deleteInstance({ name }, this.callOptions()));
  }
}

function invokeRequest(functionId: string, exportName: string, args: Value[], options: InvokeOptions) {
  return {
    name: functionName(functionId),
    exportName,
    args,
    stdin: options.stdin ?? new Uint8Array(),
    limits: limits(options),
  };
}

function limits(options: CallLimits): MessageInitShape<typeof InvocationLimitsSchema> {
  const timeout: MessageInitShape<typeof DurationSchema> | undefined = options.timeoutMs
    ? durationFromMs(options.timeoutMs)
    : undefined;
  return {
    timeout,
    fuel: options.fuel ?? 0n,
    maxMemoryBytes: options.maxMemoryBytes ?? 0n,
  };
}

/** The RPC deadline for a guest deadline: room for the guest and the hops. */
function rpcTimeoutMs(guestTimeoutMs?: number): number {
  return Math.max(guestTimeoutMs ?? 0, 10_000) + 30_000;
}

function functionName(functionId: string): string {
  return prefixed("functions/", functionId);
}

function prefixed(prefix: string, id: string): string {
  return id.startsWith(prefix) ? id : `${prefix}${id}`;
}

function required<T>(value: T | undefined, field: string): T {
  if (value === undefined) {
    throw new TensorWasmError("INTERNAL", "INTERNAL", `the response has no ${field}`);
  }
  return value;
}

