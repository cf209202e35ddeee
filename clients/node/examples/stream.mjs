// Stream a guest's output as it runs; Ctrl-C cancels the call (and stops the guest).
//   node examples/stream.mjs <function> [export]
import { GatewayClient } from "@tensorwasm/client";

const client = new GatewayClient({
  address: process.env.TENSORWASM_GATEWAY ?? "localhost:50051",
  tenant: process.env.TENSORWASM_TENANT,
  token: process.env.TENSORWASM_TOKEN,
});
const abort = new AbortController();
process.once("SIGINT", () => abort.abort());

for await (const event of client.invokeStream(process.argv[2], process.argv[3] ?? "", [], { signal: abort.signal })) {
  if (event.event.case === "output") process.stdout.write(event.event.value.data);
  if (event.event.case === "outcome") console.error("\noutcome:", event.event.value.result.case);
}
