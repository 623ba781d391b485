#!/usr/bin/env bash
# `make test-system`: the system suites, with real processes on several
# loopback addresses and a real PostgreSQL: the scale-out suite starts three
# replicas of catalog and of offers, kills, restarts and drains them under
# load; the JetStream suite does the same to a relaying catalog, to offers
# replicas sharing a stream's partitions and to a nats-server
# (tests/system). Needs root (each offers replica of the scale-out suite
# gets a mount namespace with its own /etc/hosts), psql and nats-server.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v psql >/dev/null || { echo "make test-system needs psql (Debian: apt-get install postgresql-client)" >&2; exit 1; }
command -v unshare >/dev/null || { echo "make test-system needs unshare (Debian: apt-get install util-linux)" >&2; exit 1; }
command -v nats-server >/dev/null || { echo "make test-system needs nats-server (Debian: apt-get install nats-server)" >&2; exit 1; }
[ -x tools/.venv/bin/python ] || python3 -m venv tools/.venv
tools/.venv/bin/pip install --quiet --disable-pip-version-check -r clients/python/requirements.txt
cargo build --bins --quiet
tools/.venv/bin/python -m pytest tests/system -q -s -p no:cacheprovider
