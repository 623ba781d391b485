#!/usr/bin/env bash
# `make test-chaos [SEED=<n>]`: the seeded chaos run (tests/chaos): the four
# services on PostgreSQL, two replicas of catalog and offers, the story's
# calls as load, and faults drawn from the seed (kills, stalls, database
# outages and black holes, deletions mid-flight); then the invariants. A
# failure prints the seed and the schedule; SEED=<n> replays it. Needs psql.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v psql >/dev/null || { echo "make test-chaos needs psql (Debian: apt-get install postgresql-client)" >&2; exit 1; }
[ -x tools/.venv/bin/python ] || python3 -m venv tools/.venv
tools/.venv/bin/pip install --quiet --disable-pip-version-check -r clients/python/requirements.txt
cargo build --bins --quiet
SEED="${SEED:-}" tools/.venv/bin/python -m pytest tests/chaos -q -s -p no:cacheprovider
