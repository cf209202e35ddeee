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
instance=$("${tw[@]}" instance create counter-demo | tail -n 1 | sed -E 's/.*"(instances\/[0-9a-f]+)".*/\1/')
"${tw[@]}" instance call "$instance" --export inc >/dev/null
count=$("${tw[@]}" instance call "$instance" --export add --args '[40]')
echo "$instance: $count"
[ "$count" = "[41]" ] || { echo "demo: expected [41], got $count" >&2; exit 1; }
"${tw[@]}" instance delete "$instance"
"${tw[@]}" list
"${tw[@]}" delete counter-demo
"${tw[@]}" delete add-demo
"${tw[@]}" delete hello-demo
echo "== tensorwasm down"
"${tw[@]}" down
trap - EXIT
echo "demo: OK"
