#!/usr/bin/env bash
# The contracts as a client in another language sees them: a Python client
# generated from proto/ with grpcio-tools tells the story of the system
# against the four running services, and grpcurl lists, describes and calls
# every service through reflection alone. Part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x tools/.venv/bin/python ] || python3 -m venv tools/.venv
tools/.venv/bin/pip install --quiet --disable-pip-version-check -r clients/python/requirements.txt
# The four services only: bench/bare is a benchmark reference, not needed here.
cargo build --bins --quiet
PATH="$PWD/tools/.venv/bin:$PATH" tools/.venv/bin/python -m pytest clients/python -q -p no:cacheprovider
