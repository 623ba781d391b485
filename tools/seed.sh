#!/usr/bin/env bash
# Loads a small sample catalog (two families, a few products) into a running
# catalog at ${CATALOG_ADDR:-127.0.0.1:50051}, unless it already has
# families. Products are created with fixed request ids, so a second run
# after a partial one creates nothing twice.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/lib.sh
ADDR=${CATALOG_ADDR:-127.0.0.1:50051}
require_running "$ADDR"
# Staff change the catalog.
STAFF=$(token staff)
call() { tls -max-time 5 -H "authorization: Bearer $STAFF" -d "$2" "$ADDR" "agora.catalog.v1.CatalogService/$1"; }

if call ListFamilies '{}' | grep -q familyId; then
  echo "sample data: the catalog already has families; nothing loaded"
  exit 0
fi

family_id() { call CreateFamily "{\"family\": {\"display_name\": \"$1\", \"description\": \"$2\"}}" \
  | sed -n 's/.*"familyId": "\([^"]*\)".*/\1/p'; }
product() {
  call CreateProduct "{\"request_id\": \"seed-$1\", \"product\": {\"display_name\": \"$2\", \"family_id\": \"$3\",
    \"description\": \"$4\", \"price\": {\"currency_code\": \"EUR\", \"amount_minor\": $5}}}" >/dev/null
}

screens=$(family_id "Screens" "Monitors and displays")
laptops=$(family_id "Laptops" "Portable computers")
product screen-27 "27-inch 4K screen" "$screens" "IPS panel, 60 Hz" 34900
product screen-32 "32-inch curved screen" "$screens" "VA panel, 144 Hz" 45900
product screen-24 "24-inch office screen" "$screens" "Full HD, height adjustable" 15900
product laptop-14 "14-inch ultrabook" "$laptops" "1.2 kg, 16 GB memory" 129900
product laptop-16 "16-inch workstation" "$laptops" "64 GB memory, discrete GPU" 249900
echo "sample data: 2 families and 5 products loaded into the catalog"
