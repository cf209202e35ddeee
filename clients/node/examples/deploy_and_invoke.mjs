// Deploy a module, call it with exact values, handle typed errors.
//   node examples/deploy_and_invoke.mjs add.wasm
// Environment: TENSORWASM_GATEWAY (host:port), TENSORWASM_TENANT, TENSORWASM_TOKEN.
import { readFileSync } from "node:fs";
import { GatewayClient, NotFoundError, RateLimitedError, fromValue, i32 } from "@tensorwasm/client";

const client = new GatewayClient({
  address: process.env.TENSORWASM_GATEWAY ?? "localhost:50051",
  tenant: process.env.TENSORWASM_TENANT,
  token: process.env.TENSORWASM_TOKEN,
});

const deployed = await client.createFunction("add", readFileSync(process.argv[2] ?? "add.wasm"));
console.log("deployed", deployed.name, deployed.moduleDigest);

const response = await client.invoke("add", "add", [i32(2), i32(3)]);
if (response.outcome?.result.case === "success") {
  console.log("add(2, 3) =", response.outcome.result.value.results.map(fromValue));
} else {
  console.log("the guest failed:", response.outcome?.result.value);
}

try {
  await client.getFunction("missing");
} catch (error) {
  if (error instanceof NotFoundError) console.log("not found:", error.reason, error.metadata);
  else if (error instanceof RateLimitedError) console.log("come back in", error.retryAfterMs, "ms");
  else throw error;
}
