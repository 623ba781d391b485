#!/usr/bin/env bash
# `make test`: every test. Installs what a fresh machine lacks (cargo-nextest,
# the Python virtual environment) or stops with one line naming the package
# to install; runs the workspace's tests, then the Python client and grpcurl
# against the four binaries; then counts the tests that skipped, and why.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
  echo "make test needs Rust: install it with rustup (https://rustup.rs)" >&2
  exit 1
fi
if ! command -v cargo-nextest >/dev/null; then
  echo "installing cargo-nextest, the test runner (cargo install --locked cargo-nextest)"
  cargo install --locked cargo-nextest
fi
python3 -c 'import venv, ensurepip' 2>/dev/null || {
  echo "make test needs Python's venv module: install python3-venv (Debian, Ubuntu: apt-get install python3-venv)" >&2
  exit 1
}

# Tests that cannot run here (PostgreSQL out of reach, no nats-server)
# write a line here.
AGORA_SKIP_LOG=$(mktemp)
export AGORA_SKIP_LOG
trap 'rm -f "$AGORA_SKIP_LOG"' EXIT
status=0
cargo nextest run --workspace --no-fail-fast || status=$?
if [ "$status" = 0 ]; then tools/test-clients.sh || status=$?; fi

if [ -s "$AGORA_SKIP_LOG" ]; then
  echo
  cut -f2 "$AGORA_SKIP_LOG" | sort | sed 's/^/SKIP /'
  cut -f1 "$AGORA_SKIP_LOG" | sort | uniq -c | while read -r count reason; do
    echo "SKIP: $count tests did not run: $reason"
  done
  echo "(they passed in name only; AGORA_REQUIRE_POSTGRES=1 makes an unreachable PostgreSQL a failure, AGORA_TEST_NATS=1 a missing nats-server)"
fi
exit "$status"
