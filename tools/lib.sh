# Shared by the scripts behind `make run`, `make stop`, `make seed` and
# `make story`: where grpcurl is, which services there are, and whether a
# system started by `make run` is running. Sourced, not run.

# grpcurl: $GRPCURL when set, else the one `make tools` installs.
GRPCURL=${GRPCURL:-tools/.venv/bin/grpcurl}

# name gRPC-port admin-port
SERVICES=(
  "catalog 50051 9101"
  "customers 50052 9102"
  "offers 50053 9103"
  "shopping 50054 9104"
)

# The processes of the running system: the runner first, then the services.
PID_FILE=data/run.pid

# Whether a system started by `make run` is running.
agora_running() {
  [ -f "$PID_FILE" ] || return 1
  local runner
  runner=$(head -n 1 "$PID_FILE")
  [ -n "$runner" ] && kill -0 "$runner" 2>/dev/null
}

# Whether the gRPC server on 127.0.0.1:$1 reports SERVING.
serving() {
  "$GRPCURL" -plaintext -max-time 1 "127.0.0.1:$1" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'
}

# Stops here with one line unless the catalog at $1 answers.
require_running() {
  if [ ! -x "$GRPCURL" ] && ! command -v "$GRPCURL" >/dev/null; then
    echo "grpcurl is not installed: run make run (or make tools) first" >&2
    exit 1
  fi
  if ! "$GRPCURL" -plaintext -max-time 2 "$1" grpc.health.v1.Health/Check >/dev/null 2>&1; then
    echo "Agora is not running at $1: start it with make run" >&2
    exit 1
  fi
}
