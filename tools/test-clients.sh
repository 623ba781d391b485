#!/usr/bin/env bash
# The contracts as a client in another language sees them: Python and
# TypeScript clients generated from proto/ (grpcio-tools, protobuf-es) tell
# the story of the system against the four running services, the storefront
# page is clicked through in a headless chromium, a Go client
# (Debian's protoc-gen-go and grpc-go) makes the README's first calls, and
# grpcurl lists, describes and calls every service through reflection
# alone. Part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x tools/.venv/bin/python ] || python3 -m venv tools/.venv
tools/.venv/bin/pip install --quiet --disable-pip-version-check -r clients/python/requirements.txt
# The four services only: bench/bare is a benchmark reference, not needed here.
cargo build --bins --quiet
# The TypeScript client: generated from proto/ with buf (installed as
# `make lint` installs it) and protobuf-es, compiled with tsc; its tests run
# from the Python suite, which starts the services.
command -v npm >/dev/null || { echo "make test needs Node.js and npm (Debian: apt-get install nodejs npm)" >&2; exit 1; }
# The story on JetStream starts a nats-server of its own.
command -v nats-server >/dev/null || { echo "make test needs nats-server (Debian: apt-get install nats-server)" >&2; exit 1; }
make -s tools/node_modules/.bin/buf
(cd clients/typescript && npm ci --no-audit --no-fund --loglevel=error && npm run -s build)
# The storefront page: built by vite, clicked through in chromium by the
# Python suite (playwright-core drives Debian's chromium).
(cd clients/web && npm ci --no-audit --no-fund --loglevel=error && npm run -s build >/dev/null)
# The Go client is generated and built by its test; say now what is missing.
clients/go/generate.sh >/dev/null
PATH="$PWD/tools/.venv/bin:$PATH" tools/.venv/bin/python -m pytest clients/python -q -p no:cacheprovider
