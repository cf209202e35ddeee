#!/usr/bin/env bash
# The README's demo: bring the stack up, deploy the examples, invoke them, bring it down.
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${1:-$PWD/.demo-data}
tw=(.venv/bin/tensorwasm --data-dir "$data_dir")
trap '"${tw[@]}" down >/dev/null 2>&1 || true' EXIT

echo "== tensorwasm up"
"${tw[@]}" up
echo "== deploy clients/guest/examples/add.wat"
"${tw[@]}" deploy clients/guest/examples/add.wat --name add-demo
echo "== invoke add-demo --export add --args '[1, 2]'"
result=$("${tw[@]}" invoke add-demo --export add --args '[1, 2]')
echo "$result"
[ "$result" = "[3]" ] || { echo "demo: expected [3], got $result" >&2; exit 1; }
echo "== deploy + invoke a WASI guest with stdin"
"${tw[@]}" deploy clients/guest/examples/hello.wat --name hello-demo >/dev/null
echo "stdin reaches the guest" > "$data_dir/stdin.txt"
"${tw[@]}" invoke hello-demo --stdin "$data_dir/stdin.txt"
echo "== a live instance keeps its state across calls"
"${tw[@]}" deploy clients/guest/examples/counter.wat --name counter-demo >/dev/null
instance=$("${tw[@]}" instance create counter-demo | sed -n 1p | sed -E 's/.*"(instances\/[0-9a-f]+)".*/\1/')
"${tw[@]}" instance call "$instance" --export inc >/dev/null
count=$("${tw[@]}" instance call "$instance" --export add --args '[40]')
echo "$instance: $count"
[ "$count" = "[41]" ] || { echo "demo: expected [41], got $count" >&2; exit 1; }
"${tw[@]}" instance delete "$instance"
echo "== a guest asks for a jit-emitted matmul; the dispatcher runs it (cpu backend without a GPU)"
"${tw[@]}" deploy clients/guest/examples/jit_matmul.wat --name matmul-demo >/dev/null
code=$("${tw[@]}" invoke matmul-demo --export run --args '[64, 64, 64, 1, 0]')
echo "matmul 64x64x64 through tensorwasm:gpu: $code"
[ "$code" = "[0]" ] || { echo "demo: expected [0], got $code" >&2; exit 1; }
echo "== an async invocation"
started=$("${tw[@]}" invoke add-demo --export add --args '[20, 22]' --async)
invocation=$(echo "$started" | sed -E 's/.*"invocations\/([0-9a-f]+)".*/\1/')
result=$("${tw[@]}" invocation get "$invocation" --wait | tail -n 1)
echo "invocations/$invocation: $result"
[ "$result" = "[42]" ] || { echo "demo: expected [42], got $result" >&2; exit 1; }
echo "== the HTTP/JSON face"
.venv/bin/python - "$data_dir/stack.json" <<'PY'
import json, sys, urllib.request
stack = json.load(open(sys.argv[1]))
address = next(s["http_address"] for s in stack.values() if s.get("http_address"))
request = urllib.request.Request(
    f"http://{address}/functions/add-demo/invoke",
    data=json.dumps({"export": "add", "args": [1, 2]}).encode(),
    headers={"content-type": "application/json"},
)
with urllib.request.urlopen(request, timeout=30) as response:
    body = json.load(response)
    print(f"POST http://{address}/functions/add-demo/invoke -> {response.status} {body}")
    assert body["result"] == [3], body
PY
echo "== compiled artifacts are snapshot records in the store, shared by every executor replica"
"${tw[@]}" --tenant fleet-artifacts snapshot ls
"${tw[@]}" list
"${tw[@]}" delete counter-demo
"${tw[@]}" delete matmul-demo
"${tw[@]}" delete add-demo
"${tw[@]}" delete hello-demo
echo "== tensorwasm down"
"${tw[@]}" down
trap - EXIT
echo "demo: OK"
