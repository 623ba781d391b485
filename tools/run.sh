#!/usr/bin/env bash
# `make run`: starts every Agora service locally, each with its own
# database (SQLite files under data/, or PostgreSQL with DB=postgres), as
# production runs them: TLS with a certificate of a development CA, mTLS
# between services, tokens checked against a development JWKS (all made
# under data/dev by agora-dev). Waits until all report SERVING, loads the
# sample data, prints the endpoints and calls to try, and stops them all
# cleanly on Ctrl-C or `make stop`. PROFILE=release builds optimised binaries.
# REPLICAS=N (with DB=postgres) runs N replicas of each service, replica r
# on 127.0.0.r with the same ports, sharing its context's database; each
# downstream balances over every replica of its upstreams.
# BROKER=nats carries the change feeds on NATS JetStream: a nats-server of
# its own on 127.0.0.1:$NATS_PORT (4223 by default; store under data/nats),
# over TLS with a certificate of the development CA, verifying the services'
# certificates.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/lib.sh

PROFILE=${PROFILE:-dev}
SEED=${SEED:-1}
DB=${DB:-sqlite}
REPLICAS=${REPLICAS:-1}
BROKER=${BROKER:-}
NATS_PORT=${NATS_PORT:-4223}
case "$BROKER" in
  ""|nats) ;;
  *) echo "BROKER=$BROKER: expected nats, or nothing for the services' own Watch streams" >&2; exit 2 ;;
esac
if [ "$BROKER" = nats ] && ! command -v nats-server >/dev/null; then
  echo "BROKER=nats needs nats-server (Debian: apt-get install nats-server)" >&2
  exit 1
fi
case "$REPLICAS" in
  [1-9]) ;;
  *) echo "REPLICAS=$REPLICAS: expected 1 to 9" >&2; exit 2 ;;
esac
if [ "$REPLICAS" != 1 ] && [ "$DB" != postgres ]; then
  echo "REPLICAS=$REPLICAS needs DB=postgres: a SQLite file belongs to one process" >&2
  exit 2
fi
target_dir=${CARGO_TARGET_DIR:-target}/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")

# One system at a time: a second one would find its ports taken and write
# into the first one's logs.
if agora_running; then
  echo "Agora is already running (started by make run, pid $(head -n 1 "$PID_FILE")); make stop stops it" >&2
  exit 1
fi
for s in "${SERVICES[@]}"; do
  set -- $s
  for r in $(seq 1 "$REPLICAS"); do
    for port in "$2" "$3"; do
      if (exec 3<>"/dev/tcp/127.0.0.$r/$port") 2>/dev/null; then
        echo "port 127.0.0.$r:$port (agora-$1) is in use by another program; stop it first" >&2
        exit 1
      fi
    done
  done
done
if [ "$BROKER" = nats ] && (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null; then
  echo "port 127.0.0.1:$NATS_PORT (nats-server) is in use by another program; stop it first, or set NATS_PORT" >&2
  exit 1
fi

# Every replica of a service, as its downstreams reach it.
replicas_of() {
  local port=$1 r addrs=()
  for r in $(seq 1 "$REPLICAS"); do addrs+=("https://127.0.0.$r:$port"); done
  (IFS=,; echo "${addrs[*]}")
}

case "$DB" in
  sqlite) url_prefix="sqlite:data/" url_suffix=".db" ;;
  postgres)
    # One database per context, agora_<context>, created when missing.
    server=${AGORA_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
    command -v psql >/dev/null || { echo "DB=postgres needs psql (Debian: apt-get install postgresql-client)" >&2; exit 1; }
    for s in "${SERVICES[@]}"; do
      set -- $s
      if ! psql "$server/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = 'agora_$1'" | grep -q 1; then
        psql "$server/postgres" -qc "CREATE DATABASE agora_$1"
      fi
    done
    url_prefix="$server/agora_" url_suffix="" ;;
  *) echo "DB=$DB: expected sqlite (the default) or postgres" >&2; exit 2 ;;
esac

cargo build --profile "$PROFILE" -p agora-dev $(for s in "${SERVICES[@]}"; do set -- $s; echo "-p agora-$1"; done)
mkdir -p data/logs
# The development CA and token keys are made once and kept; the service
# certificates are renewed at every start.
"$target_dir/agora-dev" init --dir "$DEV_DIR"

pids=()
# The broker first (stopped last: the services drain before it goes).
broker_env=()
if [ "$BROKER" = nats ]; then
  "$target_dir/agora-dev" server nats --dir "$DEV_DIR" 2>/dev/null
  mkdir -p data/nats
  nats_log=data/logs/nats.log
  echo "== make run, $(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$nats_log"
  ready_before=$(grep -c "Server is ready" "$nats_log" || true)
  nats-server -js -a 127.0.0.1 -p "$NATS_PORT" -sd data/nats \
    --tls --tlscert "$DEV_DIR/nats.pem" --tlskey "$DEV_DIR/nats.key" \
    --tlsverify --tlscacert "$DEV_DIR/ca.pem" >>data/logs/nats.log 2>&1 &
  nats_pid=$!
  # Ready when its log says so (a probe connection would be a TLS handshake cut short, in its log).
  for _ in $(seq 1 100); do
    [ "$(grep -c "Server is ready" "$nats_log" || true)" -gt "$ready_before" ] && break
    kill -0 "$nats_pid" 2>/dev/null || { echo "nats-server did not start; $nats_log ends with:" >&2; tail -n 5 "$nats_log" >&2; exit 1; }
    sleep 0.1
  done
  broker_env=(AGORA_EVENTS=jetstream AGORA_NATS_URL="tls://127.0.0.1:$NATS_PORT" AGORA_NATS_CA_FILE="$DEV_DIR/ca.pem")
fi
stop_all() {
  trap - INT TERM
  echo
  echo "stopping: SIGTERM to every service (they drain, then exit)"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "${nats_pid:-}" ]; then kill -TERM "$nats_pid" 2>/dev/null || true; wait "$nats_pid" 2>/dev/null || true; fi
  rm -f "$PID_FILE"
  echo "all services stopped"
}
trap 'stop_all; exit 0' INT TERM

upstream_env=()
for s in "${SERVICES[@]}"; do
  set -- $s
  upstream_env+=("AGORA_${1^^}_ADDRS=$(replicas_of "$2")")
done

# Logs are appended to, never truncated: a run starts with a line of its own.
# Replica 1 logs to data/logs/<service>.log, replica r to <service>-r.log.
started=()  # "name admin-host:port log" of each process, in start order
for s in "${SERVICES[@]}"; do
  set -- $s
  for r in $(seq 1 "$REPLICAS"); do
    log="data/logs/$1$([ "$r" = 1 ] || echo "-$r").log"
    echo "== make run, $(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$log"
    (
      # TLS, client CA, JWKS, issuer and audience of the development credentials.
      eval "$("$target_dir/agora-dev" env "$1" --dir "$DEV_DIR")"
      # On the broker, each service presents its own certificate.
      if [ "$BROKER" = nats ]; then
        export "${broker_env[@]}" AGORA_NATS_CERT_FILE="$AGORA_TLS_CERT_FILE" AGORA_NATS_KEY_FILE="$AGORA_TLS_KEY_FILE"
      fi
      # Where every context is, for those that call it (AGORA_CATALOG_ADDRS, ...).
      export "${upstream_env[@]}"
      AGORA_GRPC_ADDR="127.0.0.$r:$2" AGORA_ADMIN_ADDR="127.0.0.$r:$3" \
      AGORA_DATABASE_URL="$url_prefix$1$url_suffix" \
      AGORA_DRAIN_DELAY_MS="${AGORA_DRAIN_DELAY_MS:-500}" \
      AGORA_CORS_ORIGINS="${AGORA_CORS_ORIGINS:-http://127.0.0.1:5173}" \
        exec "$target_dir/agora-$1"
    ) >>"$log" 2>&1 &
    pids+=($!)
    started+=("$1 127.0.0.$r:$3 $log")
  done
done
echo "$$ ${pids[*]} ${nats_pid:-}" | tr ' ' '\n' | sed '/^$/d' >"$PID_FILE"

# A service that stops before SERVING says why in its log: show it.
failed() {
  echo "agora-$1 did not start: $2; its log ($3) ends with:" >&2
  tail -n 5 "$3" | sed 's/^/  /' >&2
  stop_all
  exit 1
}
for i in "${!started[@]}"; do
  set -- ${started[$i]}
  for _ in $(seq 1 100); do
    serving "$2" && break
    kill -0 "${pids[$i]}" 2>/dev/null || failed "$1" "it exited" "$3"
    sleep 0.1
  done
  serving "$2" || failed "$1" "not SERVING after 10 s" "$3"
done

if [ "$SEED" = 1 ]; then tools/seed.sh; fi

cat <<TXT

Agora is running (logs in data/logs/, databases $([ "$DB" = sqlite ] && echo "in data/*.db" || echo "agora_* on $server")$([ "$REPLICAS" = 1 ] || echo "; $REPLICAS replicas of each, on 127.0.0.1 to 127.0.0.$REPLICAS")$([ "$BROKER" = nats ] && echo "; change feeds on NATS JetStream at tls://127.0.0.1:$NATS_PORT")):
$(for s in "${SERVICES[@]}"; do set -- $s; printf '  %-10s gRPC (TLS) 127.0.0.1:%-7s admin (health, metrics) http://127.0.0.1:%s\n' "$1" "$2" "$3"; done)
Every call needs a token: make -s token ROLE=staff, or ROLE=customer SUBJECT=<customer_id>.
Clients trust the development CA: $DEV_DIR/ca.pem.
The storefront page (make web) may call them from http://127.0.0.1:5173 (gRPC-Web).

Try it: make story (in a second terminal) walks through the story with real ids,
or call it yourself with grpcurl ($GRPCURL), as the README shows.
Ctrl-C here, or make stop anywhere, stops every service.
TXT
wait
