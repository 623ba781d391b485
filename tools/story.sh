#!/usr/bin/env bash
# Walks through the story of the system against running services (make run):
# a customer registers, the catalog gets a product, an offer is made on it,
# the customer asks for their offers, and puts the product on a shopping
# list. Every call is printed before its answer, with the real ids.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/lib.sh
G=$GRPCURL
CATALOG=${CATALOG_ADDR:-127.0.0.1:50051}
CUSTOMERS=${CUSTOMERS_ADDR:-127.0.0.1:50052}
OFFERS=${OFFERS_ADDR:-127.0.0.1:50053}
SHOPPING=${SHOPPING_ADDR:-127.0.0.1:50054}

require_running "$CATALOG"

call() { # addr method json
  echo "\$ grpcurl -plaintext -d '$3' $1 $2" >&2
  "$G" -plaintext -max-time 5 -d "$3" "$1" "$2" | tee -a /dev/stderr
}
field() { sed -n "s/.*\"$1\": \"\([^\"]*\)\".*/\1/p" | head -n 1; }
rfc3339() { date -u -d "@$(( $(date +%s) + $1 ))" +%Y-%m-%dT%H:%M:%SZ; }

echo "== a customer registers"
customer=$(call "$CUSTOMERS" agora.customers.v1.CustomerService/CreateCustomer \
  "{\"customer\": {\"given_name\": \"Ada\", \"family_name\": \"Lovelace\", \"email\": \"ada.$(date +%s%N)@example.com\"}}" \
  | field customerId)

echo "== the catalog gets a family and a product"
family=$(call "$CATALOG" agora.catalog.v1.CatalogService/CreateFamily \
  '{"family": {"display_name": "Lamps", "description": "Desk and floor lamps"}}' | field familyId)
product=$(call "$CATALOG" agora.catalog.v1.CatalogService/CreateProduct \
  "{\"request_id\": \"story-$(date +%s%N)\", \"product\": {\"display_name\": \"Desk lamp\", \"family_id\": \"$family\", \"price\": {\"currency_code\": \"EUR\", \"amount_minor\": 3990}}}" \
  | field productId)

echo "== a speed offer on it, for this customer only"
call "$OFFERS" agora.offers.v1.OfferService/CreateOffer \
  "{\"offer\": {\"product_id\": \"$product\", \"customer_id\": \"$customer\", \"kind\": \"OFFER_KIND_SPEED\", \"discount_percent\": 15, \"start_time\": \"$(rfc3339 -60)\", \"end_time\": \"$(rfc3339 3600)\"}}" >/dev/null

echo "== the offers the customer can have now"
call "$OFFERS" agora.offers.v1.OfferService/ListAvailableOffers "{\"customer_id\": \"$customer\"}" >/dev/null

echo "== a shopping list with the lamp on it"
list=$(call "$SHOPPING" agora.shopping.v1.ShoppingListService/CreateShoppingList \
  "{\"shopping_list\": {\"customer_id\": \"$customer\", \"title\": \"Study\"}}" | field listId)
call "$SHOPPING" agora.shopping.v1.ShoppingListService/AddItem \
  "{\"list_id\": \"$list\", \"product_id\": \"$product\", \"quantity\": 2}" >/dev/null

echo "== the health of every service"
for addr in "$CATALOG" "$CUSTOMERS" "$OFFERS" "$SHOPPING"; do
  call "$addr" grpc.health.v1.Health/Check '{}' >/dev/null
done
