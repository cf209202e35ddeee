#!/usr/bin/env bash
# `make images-smoke`: the five images run with podman on loopback (non-root, read-only
# root filesystem, writable only where the services write), then the demo's calls
# through the gateway with the CLI: deploy, invoke, WASI stdin, a jit-emitted matmul.
set -euo pipefail
cd "$(dirname "$0")/../.."

PODMAN=(podman --runtime=runc --cgroup-manager=cgroupfs)
# podman raises rootful containers' rlimits to its defaults, which sandboxed hosts refuse:
# keep the shell's open-files limit and a bounded process count instead.
ULIMITS=(--ulimit "nofile=$(ulimit -n):$(ulimit -Hn)" --ulimit nproc=4096:4096)
TAG=${TENSORWASM_IMAGE_TAG:-0.1.0}
BASE=${TENSORWASM_SMOKE_PORT_BASE:-25050}
declare -A PORTS=([gateway]=$((BASE + 1)) [executor]=$((BASE + 2)) [dispatcher]=$((BASE + 3))
  [snapshot]=$((BASE + 4)) [jit]=$((BASE + 5)))
state=$(mktemp -d)
containers=()
cleanup() {
  for name in "${containers[@]}"; do "${PODMAN[@]}" rm --force --time 5 "$name" >/dev/null 2>&1 || true; done
  rm -rf "$state"
}
trap cleanup EXIT
python3 -c 'import secrets; print(secrets.token_urlsafe(32))' >"$state/service-token"
chmod 0644 "$state/service-token"  # read by the containers' user (10001)

serving() {  # serving ADDRESS: true once its grpc.health.v1 says SERVING
  .venv/bin/python -c 'import sys
from tensorwasm_client.stack import health
sys.exit(health(sys.argv[1]) != "SERVING")' "$1"
}

start() {  # start SERVICE [VAR=VALUE...]
  local service=$1 prefix name address
  shift
  prefix=TENSORWASM_${service^^}_
  name=tensorwasm-smoke-$service-$$
  address=127.0.0.1:${PORTS[$service]}
  local env=(-e "TENSORWASM_SERVICE_TOKEN_FILE=/run/tensorwasm/service-token"
    -e "${prefix}LISTEN_ADDRESS=$address" -e "${prefix}METRICS_ADDRESS=")
  for setting in "$@"; do env+=(-e "$setting"); done
  # writable: the service's cache and /tmp only, as host folders owned by its user (this
  # podman ignores tmpfs modes)
  mkdir -p "$state/$service/cache" "$state/$service/tmp"
  chown -R 10001:10001 "$state/$service"
  containers+=("$name")  # removed at exit even if it never starts
  "${PODMAN[@]}" run --detach --name "$name" --network host --read-only "${ULIMITS[@]}" \
    --volume "$state/$service/cache:/var/cache/tensorwasm" --volume "$state/$service/tmp:/tmp" \
    --volume "$state/service-token:/run/tensorwasm/service-token:ro" \
    "${env[@]}" "localhost/tensorwasm/$service:$TAG" >/dev/null
  local deadline=$((SECONDS + 120))
  until serving "$address"; do
    if [ "$("${PODMAN[@]}" inspect --format '{{.State.Running}}' "$name")" != true ] \
      || [ $SECONDS -gt $deadline ]; then
      echo "images-smoke: $service did not become SERVING:" >&2
      "${PODMAN[@]}" logs "$name" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
  echo "images-smoke: $service serving on $address (user $("${PODMAN[@]}" exec "$name" id -u))"
}

cache=/var/cache/tensorwasm
start snapshot "TENSORWASM_SNAPSHOT_DATA_DIR=$cache/snapshot"
start jit "TENSORWASM_JIT_DATA_DIR=$cache/jit"
start dispatcher "TENSORWASM_DISPATCHER_BACKEND=cpu" \
  "TENSORWASM_DISPATCHER_JIT_ADDRESS=127.0.0.1:${PORTS[jit]}"
start executor "TENSORWASM_EXECUTOR_SNAPSHOT_ADDRESS=127.0.0.1:${PORTS[snapshot]}" \
  "TENSORWASM_EXECUTOR_DISPATCHER_ADDRESS=127.0.0.1:${PORTS[dispatcher]}" \
  "TENSORWASM_EXECUTOR_JIT_ADDRESS=127.0.0.1:${PORTS[jit]}" \
  "TENSORWASM_EXECUTOR_ARTIFACT_DIR=$cache/artifacts" "TENSORWASM_EXECUTOR_IMAGE_DIR=$cache/images"
start gateway "TENSORWASM_GATEWAY_SNAPSHOT_ADDRESS=127.0.0.1:${PORTS[snapshot]}" \
  "TENSORWASM_GATEWAY_EXECUTOR_ADDRESSES=127.0.0.1:${PORTS[executor]}" \
  "TENSORWASM_GATEWAY_DATABASE_PATH=$cache/registry.sqlite3" \
  "TENSORWASM_GATEWAY_HTTP_ADDRESS=127.0.0.1:$((BASE + 10))"

# The root filesystem is read-only: a write outside the tmpfs mounts fails.
if "${PODMAN[@]}" exec "${containers[0]}" touch /opt/tensorwasm/probe 2>/dev/null; then
  echo "images-smoke: the root filesystem is writable" >&2; exit 1
fi

tw=(.venv/bin/tensorwasm --gateway "127.0.0.1:${PORTS[gateway]}" --tenant smoke)
check() {  # check WHAT EXPECTED ACTUAL
  echo "images-smoke: $1: $3"
  [ "$3" = "$2" ] || { echo "images-smoke: expected $2" >&2; exit 1; }
}
"${tw[@]}" deploy clients/guest/examples/add.wat --name add-demo >/dev/null
check "add [1, 2]" "[3]" "$("${tw[@]}" invoke add-demo --export add --args '[1, 2]')"
"${tw[@]}" deploy clients/guest/examples/hello.wat --name hello-demo >/dev/null
echo "stdin reaches the guest" >"$state/stdin.txt"
"${tw[@]}" invoke hello-demo --stdin "$state/stdin.txt"
"${tw[@]}" deploy clients/guest/examples/jit_matmul.wat --name matmul-demo >/dev/null
check "jit matmul 64x64x64" "[0]" \
  "$("${tw[@]}" invoke matmul-demo --export run --args '[64, 64, 64, 1, 0]')"
echo "images-smoke: OK"
