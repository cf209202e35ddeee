// The client against a real stack (five services, tokens, a tight rate limit).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { after, before, test } from "node:test";
import { createServer } from "node:net";
import {
  GatewayClient,
  InvalidArgumentError,
  NO_RETRIES,
  NotFoundError,
  PermissionDeniedError,
  RateLimitedError,
  UnauthenticatedError,
  UnavailableError,
  f32Bits,
  f64Bits,
  fromValue,
  i32,
  i64,
  v128,
} from "../dist/index.js";
import { startStack } from "./stack.mjs";

let stack;
before(async () => {
  stack = await startStack();
});
after(async () => {
  await stack?.stop();
});

function client(tenant, options = {}) {
  return new GatewayClient({ address: stack.gateway, tenant, token: stack.tokens.wildcard, ...options });
}

function module(name) {
  return new Uint8Array(readFileSync(stack.modules[name]));
}

test("deploy, invoke with exact values, list, delete", async () => {
  const gateway = client("node-values");
  const deployed = await gateway.createFunction("numeric", module("numeric"));
  assert.equal(deployed.name, "functions/numeric");
  const one = async (exportName, value) => {
    const response = await gateway.invoke("numeric", exportName, [value]);
    assert.equal(response.outcome.result.case, "success");
    return fromValue(response.outcome.result.value.results[0]);
  };
  assert.equal((await one("id_i64", i64(2n ** 62n + 1n))).value, 2n ** 62n + 1n);
  assert.equal((await one("id_i32", i32(-7))).value, -7);
  assert.equal((await one("id_f32", f32Bits(0x7fa00001))).bits, 0x7fa00001);
  assert.equal((await one("id_f64", f64Bits(0x7ff4000000000001n))).bits, 0x7ff4000000000001n);
  const bytes = Uint8Array.from({ length: 16 }, (_, i) => i * 3);
  assert.deepEqual((await one("id_v128", v128(bytes))).value, bytes);
  const names = [];
  for await (const f of gateway.listFunctions()) names.push(f.name);
  assert.deepEqual(names, ["functions/numeric"]);
  await gateway.deleteFunction("numeric");
  await assert.rejects(gateway.getFunction("numeric"), NotFoundError);
});

test("a module uploaded in chunks is deployed; a wrong size is a typed refusal", async () => {
  const gateway = client("node-upload");
  const wasm = module("add");
  const seen = [];
  const deployed = await gateway.uploadFunction("add", wasm, undefined, {
    chunkBytes: 16,
    onProgress: (sent, total) => seen.push([sent, total]),
  });
  assert.equal(deployed.moduleSizeBytes, BigInt(wasm.length));
  assert.deepEqual(seen.at(-1), [wasm.length, wasm.length]);
  assert.ok(seen.length > 1);
  const response = await gateway.invoke("add", "add", [i32(40), i32(2)]);
  assert.equal(fromValue(response.outcome.result.value.results[0]).value, 42);
  await assert.rejects(gateway.uploadFunction("bad", new Uint8Array(0)), (error) => {
    assert.ok(error instanceof InvalidArgumentError, String(error));
    return true;
  });
});

test("streaming invoke is an async iterator of output, then the outcome", async () => {
  const gateway = client("node-stream");
  await gateway.createFunction("stream", module("stream"));
  const output = [];
  let outcome;
  for await (const event of gateway.invokeStream("stream", "lines")) {
    if (event.event.case === "output") output.push(new TextDecoder().decode(event.event.value.data));
    if (event.event.case === "outcome") outcome = event.event.value;
  }
  assert.deepEqual(output.join(""), "out 1\nerr 1\nout 2\nerr 2\nout 3\n");
  assert.equal(fromValue(outcome.result.value.results[0]).value, 42);
});

test("async invocations and live instances", async () => {
  const gateway = client("node-async");
  await gateway.createFunction("add", module("add"));
  const started = await gateway.startInvocation("add", "add", [i32(40), i32(2)]);
  const finished = await gateway.waitInvocation(started.name);
  assert.equal(fromValue(finished.outcome.result.value.results[0]).value, 42);
  const spawned = await gateway.createInstance("add");
  const instance = spawned.instance.name;
  assert.equal((await gateway.getInstance(instance)).name, instance);
  const called = await gateway.callInstance(instance, "add", [i32(1), i32(1)]);
  assert.equal(fromValue(called.outcome.result.value.results[0]).value, 2);
  await gateway.deleteInstance(instance);
  const seen = [];
  for await (const invocation of gateway.listInvocations()) seen.push(invocation.name);
  assert.deepEqual(seen, [started.name]);
});

test("each refusal is its typed error with the reason, metadata and request id", async () => {
  // Each call is made (and its rejection handled) one after the other.
  const cases = [
    [() => client("node-err").getFunction("absent"), NotFoundError, "FUNCTION_NOT_FOUND"],
    [() => client("node-err", { token: "not-a-token-0123456789" }).getFunction("x"), UnauthenticatedError, "UNAUTHENTICATED"],
    [() => client("beta", { token: stack.tokens.acme }).getFunction("x"), PermissionDeniedError, "TENANT_SCOPE_DENIED"],
    [() => client("Not A Tenant").getFunction("x"), InvalidArgumentError, "INVALID_NAME"],
  ];
  for (const [call, family, reason] of cases) {
    const error = await call().then(() => assert.fail("no error"), (e) => e);
    assert.ok(error instanceof family, `${error} is not a ${family.name}`);
    assert.equal(error.reason, reason);
    assert.match(error.domain, /\.tensorwasm\.dev$/);
    assert.ok(error.requestId.length >= 8, "the gateway returns the request id");
  }
  const missing = await client("node-err").getFunction("absent").catch((e) => e);
  assert.ok(Object.keys(missing.metadata).length > 0, "ErrorInfo metadata decoded");
});

test("a burst is refused with RetryInfo without retries, and absorbed with them", async () => {
  const raw = client("node-burst-raw", { retry: NO_RETRIES });
  const results = await Promise.allSettled(Array.from({ length: 9 }, () => raw.listFunctionsPage(10)));
  const refused = results.filter((r) => r.status === "rejected").map((r) => r.reason);
  assert.ok(refused.length > 0, "a burst past the bucket was never refused");
  for (const error of refused) {
    assert.ok(error instanceof RateLimitedError, String(error));
    assert.equal(error.reason, "RATE_LIMITED");
    assert.ok(error.retryAfterMs > 0 && error.retryAfterMs <= 1000, String(error.retryAfterMs));
  }
  const patient = client("node-burst-retried");
  const pages = await Promise.all(Array.from({ length: 9 }, () => patient.listFunctionsPage(10)));
  assert.equal(pages.length, 9);
});

test("an unreachable gateway is UNAVAILABLE with no request id, after the retries", async () => {
  const port = await new Promise((resolve) => {
    const server = createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
  const gateway = new GatewayClient({ address: `127.0.0.1:${port}`, retry: { maxAttempts: 2, backoffMs: 10 } });
  const error = await gateway.getFunction("x").catch((e) => e);
  assert.ok(error instanceof UnavailableError, String(error));
  assert.equal(error.requestId, "");
  assert.ok(error.notSent, "a refused connection sent nothing");
});
