#!/usr/bin/env bash
# `make deploy-check`: the manifests under deploy/, offline: current with
# their generator, rendered by kustomize, validated strictly against the
# Kubernetes schema, NetworkPolicies equal to the context map, variables
# known and required ones set (tests/deploy).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v kubectl >/dev/null || { echo "make deploy-check needs kubectl with kustomize (https://kubernetes.io/docs/tasks/tools/)" >&2; exit 1; }
[ -x tools/.venv/bin/python ] || python3 -m venv tools/.venv
tools/.venv/bin/pip install --quiet --disable-pip-version-check -r clients/python/requirements.txt
tools/.venv/bin/python -m pytest tests/deploy -q -p no:cacheprovider
