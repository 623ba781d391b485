#!/usr/bin/env bash
# `make stop`: stops the system `make run` started, from any terminal, as
# Ctrl-C in its own would: every service drains and exits.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/lib.sh

if [ ! -f "$PID_FILE" ]; then
  echo "Agora is not running (no $PID_FILE): nothing to stop"
  exit 0
fi
mapfile -t pids <"$PID_FILE"
if agora_running; then
  # The runner stops its services and removes the pid file.
  kill -TERM "${pids[0]}"
else
  # The runner is gone (killed): stop what it left behind.
  for pid in "${pids[@]:1}"; do kill -TERM "$pid" 2>/dev/null || true; done
  rm -f "$PID_FILE"
fi
for _ in $(seq 1 300); do
  alive=0
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  [ "$alive" = 0 ] && { echo "Agora stopped"; exit 0; }
  sleep 0.1
done
echo "Agora did not stop within 30 s: pids ${pids[*]}" >&2
exit 1
