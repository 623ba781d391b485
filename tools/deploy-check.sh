#!/usr/bin/env bash
# `make deploy-check`: the manifests under deploy/, offline: current with
# their generator, rendered by kustomize (each overlay alone and with the
# optional components), validated strictly against the Kubernetes schema,
# linted by checkov, NetworkPolicies equal to the context map, variables
# known and required ones set (tests/deploy).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x tools/.venv/bin/python ] || python3 -m venv tools/.venv
tools/.venv/bin/pip install --quiet --disable-pip-version-check -r clients/python/requirements.txt
[ -x tools/.venv-checkov/bin/python ] || python3 -m venv tools/.venv-checkov
tools/.venv-checkov/bin/pip install --quiet --disable-pip-version-check -r tools/requirements-checkov.txt
tools/.venv/bin/python -m pytest tests/deploy -q -p no:cacheprovider
