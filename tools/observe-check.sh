#!/usr/bin/env bash
# `make observe-check`: the rules checked and unit-tested by promtool, every
# metric and label the rules and dashboards use found on the four running
# services, and AgoraServiceDown raised and resolved by a real Prometheus
# when catalog stops and comes back (tests/monitoring).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-prometheus.sh
[ -x tools/.venv/bin/python ] || python3 -m venv tools/.venv
tools/.venv/bin/pip install --quiet --disable-pip-version-check -r clients/python/requirements.txt
cargo build --bins --quiet
tools/.venv/bin/python -m pytest tests/monitoring -q -p no:cacheprovider
