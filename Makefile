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

.PHONY: help uv runtime setup settings-reference proto proto-check lint fmt typecheck test test-unit test-integration test-gpu bench bench-smoke up down status demo clean guest-toolchain guests cuda-tools test-oversubscribed

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

lint: setup proto-check ## buf lint, ruff, mypy --strict
	cd protos && ../$(BUF) lint
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy runtime_common services clients/python tools kernels protos/tensorwasm/common/v1/values_json.py protos/tensorwasm/common/v1/service_token.py

fmt: .venv/.synced ## Format the Python code
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

test: setup guest-toolchain ## Run the whole test suite (unit, integration, e2e) on the cpu backend; C guests included
	.venv/bin/pytest -m "not gpu and not bench" -q

# Busy processes beside pytest (one per core, so pytest and the five services share the CPUs
# with as many spinning loops), so races that only show on a loaded machine fail here first.
# Bounded in time; the busy loops end with the target, pass or fail.
BUSY_PROCESSES ?= $(shell nproc)
OVERSUBSCRIBED_LIMIT_SECONDS ?= 1200

test-oversubscribed: setup guest-toolchain ## Integration tests once, CPUs oversubscribed by busy loops
	@busy=(); trap 'kill "$${busy[@]}" 2>/dev/null; wait 2>/dev/null' EXIT; \
	for _ in $$(seq $(BUSY_PROCESSES)); do yes >/dev/null & busy+=($$!); done; \
	echo "test-oversubscribed: $(BUSY_PROCESSES) busy processes on $$(nproc) cores"; \
	started=$$SECONDS; status=0; \
	timeout --kill-after=30 $(OVERSUBSCRIBED_LIMIT_SECONDS) \
	  .venv/bin/pytest tests/integration -m "not gpu and not bench" -q -p no:cacheprovider || status=$$?; \
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

# The wasm32-wasi C toolchain for guests (Debian/Ubuntu packages), installed when missing.
GUEST_TOOLCHAIN := clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32
GUEST_OUT ?= build/guests

guest-toolchain: ## Install clang-19, lld-19, wasi-libc, libclang-rt-19-dev-wasm32 (apt) if missing
	@if dpkg -s $(GUEST_TOOLCHAIN) >/dev/null 2>&1; then echo "guest-toolchain: installed"; else \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(GUEST_TOOLCHAIN); fi

guests: .venv/.synced guest-toolchain ## Build the example GPU guests (C with clang, WAT) into build/guests
	$(PY) tools/build_guests.py --require-c --out $(GUEST_OUT)

bench: setup ## Run the benchmark groups; JSON under bench-results/
	$(PY) -m tests.bench --out bench-results

bench-smoke: setup ## Every benchmark group at smoke sizing (CI: the groups still run; timings not judged)
	$(PY) -m tests.bench --quick --out $${TMPDIR:-/tmp}/tensorwasm-bench-smoke

up: runtime ## Start the five services on loopback (state in DATA_DIR)
	.venv/bin/tensorwasm --data-dir $(DATA_DIR) up

down: ## Stop the local stack
	.venv/bin/tensorwasm --data-dir $(DATA_DIR) down

status: ## Show the local stack's health
	.venv/bin/tensorwasm --data-dir $(DATA_DIR) status

demo: runtime ## Fresh clone to result: stack up, deploy the example, invoke it, stack down
	bash deploy/demo.sh $(DATA_DIR)

clean: ## Remove the venv, tools and local data
	rm -rf .venv .tools .demo-data bench-results .pytest_cache .mypy_cache .ruff_cache
