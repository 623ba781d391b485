#!/usr/bin/env bash
# `make postgres-tls`: gives the local PostgreSQL a server certificate from a
# CA of its own (made with agora-dev), so that TLS to PostgreSQL with
# sslmode=verify-full is tested against a real server. It writes the
# certificate, its key and the CA under $AGORA_POSTGRES_TLS_DIR (default
# /etc/postgresql/agora-tls), points ssl_cert_file and ssl_key_file at them
# with ALTER SYSTEM, turns ssl on and reloads the configuration: run it as
# root, on a PostgreSQL you may reconfigure (CI's). Plaintext connections
# keep working. The tests find the CA at $DIR/ca.pem.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${AGORA_POSTGRES_TLS_DIR:-/etc/postgresql/agora-tls}
URL=${AGORA_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}
command -v psql >/dev/null || { echo "make postgres-tls needs psql (Debian: apt-get install postgresql-client)" >&2; exit 1; }
cargo build --quiet -p agora-dev
mkdir -p "$DIR"
target/debug/agora-dev server postgres --dir "$DIR"
if id postgres >/dev/null 2>&1; then chown postgres "$DIR/postgres.pem" "$DIR/postgres.key"; fi
chmod 644 "$DIR/ca.pem" "$DIR/postgres.pem"
chmod 600 "$DIR/postgres.key"
psql "$URL" -q -v ON_ERROR_STOP=1 \
  -c "ALTER SYSTEM SET ssl_cert_file = '$DIR/postgres.pem'" \
  -c "ALTER SYSTEM SET ssl_key_file = '$DIR/postgres.key'" \
  -c "ALTER SYSTEM SET ssl = on" \
  -c "SELECT pg_reload_conf()" >/dev/null
# The reload is asynchronous: wait (bounded) until a verified connection works.
verified="${URL%%\?*}?sslmode=verify-full&sslrootcert=$DIR/ca.pem"
for _ in $(seq 1 50); do
  if psql "$verified" -qtAc "SELECT 1" >/dev/null 2>&1; then
    echo "PostgreSQL serves TLS with a certificate of $DIR/ca.pem"
    exit 0
  fi
  sleep 0.1
done
psql "$verified" -qtAc "SELECT 1"
