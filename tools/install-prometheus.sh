#!/usr/bin/env bash
# Prometheus and promtool from Debian's package, unpacked under
# tools/prometheus without installing the package (no daemon, no service
# user): `make observe` and `make observe-check` run them from there.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=tools/prometheus
if [ -x "$dir/usr/bin/prometheus" ] && [ -x "$dir/usr/bin/promtool" ]; then exit 0; fi
command -v apt-get >/dev/null || {
  echo "installing Prometheus needs apt-get (Debian); elsewhere put prometheus and promtool in $dir/usr/bin" >&2
  exit 1
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download prometheus >/dev/null 2>&1) || { apt-get update -qq && (cd "$tmp" && apt-get download prometheus >/dev/null); }
mkdir -p "$dir"
dpkg-deb -x "$tmp"/prometheus_*.deb "$dir"
"$dir/usr/bin/prometheus" --version 2>&1 | head -n 1
