#!/usr/bin/env bash
# Walks through the story of the system against running services (make run):
# staff register a customer, put a product in the catalog and make an offer
# on it; the customer, with a token of their own, asks for their offers and
# puts the product on a shopping list. Every call is printed before its
# answer, with the real ids (tokens are shown by name, never by value).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/lib.sh
G=$GRPCURL
CATALOG=${CATALOG_ADDR:-127.0.0.1:50051}
CUSTOMERS=${CUSTOMERS_ADDR:-127.0.0.1:50052}
OFFERS=${OFFERS_ADDR:-127.0.0.1:50053}
SHOPPING=${SHOPPING_ADDR:-127.0.0.1:50054}

require_running "$CATALOG"

STAFF=$(token staff)
call() { # token-name addr method json
  local bearer
  bearer=${!1}
  echo "\$ grpcurl -cacert $DEV_DIR/ca.pem -H \"authorization: Bearer \$$1\" -d '$4' $2 $3" >&2
  tls -max-time 5 -H "authorization: Bearer $bearer" -d "$4" "$2" "$3" | tee -a /dev/stderr
}
field() { sed -n "s/.*\"$1\": \"\([^\"]*\)\".*/\1/p" | head -n 1; }
rfc3339() { date -u -d "@$(( $(date +%s) + $1 ))" +%Y-%m-%dT%H:%M:%SZ; }

echo "== staff register a customer (STAFF=\$(make -s token ROLE=staff))"
customer=$(call STAFF "$CUSTOMERS" agora.customers.v1.CustomerService/CreateCustomer \
  "{\"customer\": {\"given_name\": \"Ada\", \"family_name\": \"Lovelace\", \"email\": \"ada.$(date +%s%N)@example.com\"}}" \
  | field customerId)

echo "== staff put a family and a product in the catalog"
family=$(call STAFF "$CATALOG" agora.catalog.v1.CatalogService/CreateFamily \
  '{"family": {"display_name": "Lamps", "description": "Desk and floor lamps"}}' | field familyId)
product=$(call STAFF "$CATALOG" agora.catalog.v1.CatalogService/CreateProduct \
  "{\"request_id\": \"story-$(date +%s%N)\", \"product\": {\"display_name\": \"Desk lamp\", \"family_id\": \"$family\", \"price\": {\"currency_code\": \"EUR\", \"amount_minor\": 3990}}}" \
  | field productId)

echo "== staff make a speed offer on it, for this customer only"
call STAFF "$OFFERS" agora.offers.v1.OfferService/CreateOffer \
  "{\"offer\": {\"product_id\": \"$product\", \"customer_id\": \"$customer\", \"kind\": \"OFFER_KIND_SPEED\", \"discount_percent\": 15, \"start_time\": \"$(rfc3339 -60)\", \"end_time\": \"$(rfc3339 3600)\"}}" >/dev/null

echo "== the customer signs in (ME=\$(make -s token ROLE=customer SUBJECT=$customer))"
ME=$(token customer "$customer")

echo "== the offers the customer can have now"
call ME "$OFFERS" agora.offers.v1.OfferService/ListAvailableOffers "{\"customer_id\": \"$customer\"}" >/dev/null

echo "== the customer's shopping list with the lamp on it"
list=$(call ME "$SHOPPING" agora.shopping.v1.ShoppingListService/CreateShoppingList \
  "{\"shopping_list\": {\"customer_id\": \"$customer\", \"title\": \"Study\"}}" | field listId)
call ME "$SHOPPING" agora.shopping.v1.ShoppingListService/AddItem \
  "{\"list_id\": \"$list\", \"product_id\": \"$product\", \"quantity\": 2}" >/dev/null

echo "== another customer's list is refused (PERMISSION_DENIED)"
OTHER=$(token customer cus_someone_else)
echo "\$ grpcurl ... -H \"authorization: Bearer \$OTHER\" -d '{\"list_id\": \"$list\"}' $SHOPPING agora.shopping.v1.ShoppingListService/GetShoppingList" >&2
refused=$(tls -max-time 5 -H "authorization: Bearer $OTHER" -d "{\"list_id\": \"$list\"}" "$SHOPPING" \
  agora.shopping.v1.ShoppingListService/GetShoppingList 2>&1 || true)
echo "$refused" >&2
if ! grep -q PermissionDenied <<<"$refused"; then
  echo "another customer's call was not refused" >&2
  exit 1
fi

echo "== the health of every service, in plaintext on its admin port, as a Kubernetes probe asks"
for s in "${SERVICES[@]}"; do
  set -- $s
  echo "\$ grpcurl -plaintext 127.0.0.1:$3 grpc.health.v1.Health/Check" >&2
  "$G" -plaintext -max-time 5 "127.0.0.1:$3" grpc.health.v1.Health/Check | tee -a /dev/stderr >/dev/null
done
