# Shared by the scripts behind `make run`, `make stop`, `make seed`,
# `make story` and `make token`: where grpcurl and the development
# credentials are, which services there are, and whether a system started
# by `make run` is running. Sourced, not run.

# grpcurl: $GRPCURL when set, else the one `make tools` installs.
GRPCURL=${GRPCURL:-tools/.venv/bin/grpcurl}

# The development credentials `make run` makes (agora-dev init): the CA
# that signs every service's certificate, the certificates, and the key
# development tokens are signed with, with its JWKS.
DEV_DIR=data/dev
AGORA_DEV=${AGORA_DEV:-${CARGO_TARGET_DIR:-target}/debug/agora-dev}

# grpcurl as a client of the running system: TLS, trusting the development CA.
tls() { "$GRPCURL" -cacert "$DEV_DIR/ca.pem" "$@"; }

# A development token: token staff | token customer <customer_id>.
token() { "$AGORA_DEV" token "$@" --dir "$DEV_DIR"; }

# name gRPC-port admin-port, one entry a context of proto/context_map.json
# (tools/contexts.py reads it).
mapfile -t SERVICES < <(python3 "$(dirname "${BASH_SOURCE[0]}")/contexts.py")
if [ "${#SERVICES[@]}" -eq 0 ]; then
  echo "no services: tools/contexts.py could not read proto/context_map.json" >&2
  exit 1
fi

# The processes of the running system: the runner first, then the services.
PID_FILE=data/run.pid

# Whether a system started by `make run` is running.
agora_running() {
  [ -f "$PID_FILE" ] || return 1
  local runner
  runner=$(head -n 1 "$PID_FILE")
  [ -n "$runner" ] && kill -0 "$runner" 2>/dev/null
}

# Whether the service whose admin port is $1 (a port on 127.0.0.1, or
# host:port) reports SERVING: plaintext health, as a Kubernetes probe asks it.
serving() {
  local addr=$1
  [[ "$addr" == *:* ]] || addr="127.0.0.1:$addr"
  "$GRPCURL" -plaintext -max-time 1 "$addr" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'
}

# Stops here with one line unless the service at $1 answers over TLS.
require_running() {
  if [ ! -x "$GRPCURL" ] && ! command -v "$GRPCURL" >/dev/null; then
    echo "grpcurl is not installed: run make run (or make tools) first" >&2
    exit 1
  fi
  if [ ! -f "$DEV_DIR/ca.pem" ] || [ ! -x "$AGORA_DEV" ]; then
    echo "no development credentials in $DEV_DIR: start Agora with make run" >&2
    exit 1
  fi
  # grpcurl finds the method through reflection, which wants a token.
  if ! tls -max-time 2 -H "authorization: Bearer $(token staff)" "$1" grpc.health.v1.Health/Check >/dev/null 2>&1; then
    echo "Agora is not running at $1: start it with make run" >&2
    exit 1
  fi
}
