#!/usr/bin/env bash
# Starts every Agora service locally, each with its own SQLite file under
# data/, waits until all report SERVING, loads the sample data, prints the
# endpoints and calls to try, and stops them all cleanly on Ctrl-C.
# Called by `make run`; PROFILE=release builds optimised binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=${PROFILE:-dev}
SEED=${SEED:-1}
GRPCURL=tools/.venv/bin/grpcurl
target_dir=target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")

# name grpc-port admin-port
SERVICES=(
  "catalog 50051 9101"
  "customers 50052 9102"
  "offers 50053 9103"
  "shopping 50054 9104"
)

cargo build --profile "$PROFILE" $(for s in "${SERVICES[@]}"; do set -- $s; echo "-p agora-$1"; done)
mkdir -p data/logs

pids=()
stop_all() {
  trap - INT TERM
  echo
  echo "stopping: SIGTERM to every service (they drain, then exit)"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "all services stopped"
}
trap 'stop_all; exit 0' INT TERM

for s in "${SERVICES[@]}"; do
  set -- $s
  AGORA_GRPC_ADDR="127.0.0.1:$2" AGORA_ADMIN_ADDR="127.0.0.1:$3" \
  AGORA_DATABASE_URL="${AGORA_DATABASE_URL_PREFIX:-sqlite:data/}$1.db" \
  AGORA_DRAIN_DELAY_MS="${AGORA_DRAIN_DELAY_MS:-500}" \
    "$target_dir/agora-$1" >"data/logs/$1.log" 2>&1 &
  pids+=($!)
done

serving() { "$GRPCURL" -plaintext -max-time 1 "127.0.0.1:$1" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; }
for i in "${!SERVICES[@]}"; do
  set -- ${SERVICES[$i]}
  for _ in $(seq 1 100); do
    serving "$2" && break
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then echo "agora-$1 exited; see data/logs/$1.log"; stop_all; exit 1; fi
    sleep 0.1
  done
  serving "$2" || { echo "agora-$1 is not SERVING after 10 s; see data/logs/$1.log"; stop_all; exit 1; }
done

if [ "$SEED" = 1 ]; then tools/seed.sh; fi

cat <<TXT

Agora is running (logs in data/logs/, data in data/*.db):
  catalog    gRPC 127.0.0.1:50051   metrics http://127.0.0.1:9101/metrics
  customers  gRPC 127.0.0.1:50052   metrics http://127.0.0.1:9102/metrics
  offers     gRPC 127.0.0.1:50053   metrics http://127.0.0.1:9103/metrics
  shopping   gRPC 127.0.0.1:50054   metrics http://127.0.0.1:9104/metrics

The story, one call at a time (or all of it with real ids: make story):
  G=$GRPCURL
  \$G -plaintext 127.0.0.1:50051 list
  \$G -plaintext -d '{"customer": {"given_name": "Ada", "family_name": "Lovelace", "email": "ada@example.com"}}' \\
     127.0.0.1:50052 agora.customers.v1.CustomerService/CreateCustomer
  \$G -plaintext -d '{"page_size": 2}' 127.0.0.1:50051 agora.catalog.v1.CatalogService/ListProducts
  \$G -plaintext -d '{"offer": {"product_id": "<product_id>", "customer_id": "<customer_id>", "kind": "OFFER_KIND_SPEED",
     "discount_percent": 15, "start_time": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "end_time": "$(date -u -d '+1 hour' +%Y-%m-%dT%H:%M:%SZ)"}}' \\
     127.0.0.1:50053 agora.offers.v1.OfferService/CreateOffer
  \$G -plaintext -d '{"customer_id": "<customer_id>"}' 127.0.0.1:50053 agora.offers.v1.OfferService/ListAvailableOffers
  \$G -plaintext -d '{"shopping_list": {"customer_id": "<customer_id>", "title": "Study"}}' \\
     127.0.0.1:50054 agora.shopping.v1.ShoppingListService/CreateShoppingList
  \$G -plaintext -d '{"list_id": "<list_id>", "product_id": "<product_id>", "quantity": 2}' \\
     127.0.0.1:50054 agora.shopping.v1.ShoppingListService/AddItem
  \$G -plaintext 127.0.0.1:50053 grpc.health.v1.Health/Check
  curl -s http://127.0.0.1:9103/metrics | grep -E 'grpc_server_handled_total|agora_feed_lag'

Ctrl-C stops every service.
TXT
wait
