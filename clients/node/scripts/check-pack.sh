#!/usr/bin/env bash
# `npm pack`, then install the tarball in an empty project and use it as a user would:
# import it from JavaScript, and type-check a TypeScript file against its declarations.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tarball=$(npm pack --silent --pack-destination "$work" | tail -1)
cd "$work"
npm init -y >/dev/null
npm pkg set type=module >/dev/null
npm install --silent --no-audit --no-fund "./$tarball"
node --input-type=module -e '
import { GatewayClient, i32, i64, RateLimitedError, fromValue } from "@tensorwasm/client";
if (typeof GatewayClient !== "function" || !(new RateLimitedError("RESOURCE_EXHAUSTED", "RATE_LIMITED", "x") instanceof Error)) process.exit(1);
if (fromValue(i64(1n)).value !== 1n || fromValue(i32(3)).value !== 3) process.exit(1);
'
cat > use.ts <<'TS'
import { GatewayClient, i32, type WasmValue, NotFoundError } from "@tensorwasm/client";
const client: GatewayClient = new GatewayClient({ address: "localhost:50051", tenant: "acme" });
const value: WasmValue = { type: "i64", value: 1n };
export async function run(): Promise<string> {
  try {
    const f = await client.getFunction("add");
    return f.name + String(value.value) + String(i32(1).kind.value);
  } catch (e) {
    if (e instanceof NotFoundError) return e.reason;
    throw e;
  }
}
TS
"$OLDPWD/node_modules/.bin/tsc" --noEmit --strict --module nodenext --moduleResolution nodenext --target es2022 --skipLibCheck false --types node --typeRoots "$OLDPWD/node_modules/@types" use.ts
echo "check-pack: $tarball installs, imports and type-checks"
