// Starts a real TensorWasm stack (test/start_stack.py, the repo's Python launcher) for a
// test file; `stop()` closes its stdin and waits for it to exit.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "../../..");

export async function startStack() {
  const python = process.env.TENSORWASM_PYTHON ?? path.join(repo, ".venv/bin/python");
  const child = spawn(python, [path.join(here, "start_stack.py")], {
    cwd: repo,
    stdio: ["pipe", "pipe", "inherit"],
  });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  const lines = createInterface({ input: child.stdout });
  const first = await new Promise((resolve, reject) => {
    lines.once("line", resolve);
    child.once("exit", (code) => reject(new Error(`the stack exited (${code}) before it started`)));
  });
  const stack = JSON.parse(first);
  stack.stop = async () => {
    child.stdin.end();
    await exited;
  };
  return stack;
}
