#!/usr/bin/env bash
# `make web`: serves the storefront (clients/web) with vite on
# http://127.0.0.1:5173, the origin `make run` lets call the services, and
# prints two ways in: as staff, and as a customer it registers. Each is the
# page's URL with a development token in its fragment (which the browser
# never sends to a server). Needs the services running (make run).
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/lib.sh
ORIGIN=http://127.0.0.1:5173

require_running 127.0.0.1:50051
command -v npm >/dev/null || { echo "make web needs Node.js and npm (Debian: apt-get install nodejs npm)" >&2; exit 1; }
make -s tools/node_modules/.bin/buf
cd clients/web
[ -d node_modules ] || npm ci --no-audit --no-fund --loglevel=error
npm run -s generate
# Where the page finds the services (the ports of make run).
mkdir -p public
cat >public/config.json <<JSON
{"catalog": "https://127.0.0.1:50051", "offers": "https://127.0.0.1:50053", "shopping": "https://127.0.0.1:50054"}
JSON
cd ../..

# A customer to sign in as, registered by staff.
staff=$(token staff)
customer=$(tls -max-time 5 -H "authorization: Bearer $staff" \
  -d "{\"customer\": {\"given_name\": \"Web\", \"family_name\": \"Shopper\", \"email\": \"shopper.$(date +%s%N)@example.com\"}}" \
  127.0.0.1:50052 agora.customers.v1.CustomerService/CreateCustomer | sed -n 's/.*"customerId": "\([^"]*\)".*/\1/p' | head -n 1)

# The browser reaches the services over TLS: it must trust the development
# CA, or (Chromium) the services' keys, given on its command line.
keys=$(for s in catalog offers shopping; do
  openssl x509 -in "$DEV_DIR/$s.pem" -pubkey -noout | openssl pkey -pubin -outform der \
    | openssl dgst -sha256 -binary | base64
done | paste -sd, -)

cat <<TXT

The storefront, served by vite at $ORIGIN (Ctrl-C stops it). Open it
  as staff:             $ORIGIN/#token=$staff
  as customer $customer: $ORIGIN/#token=$(token customer "$customer")
Staff add products and offers (give the customer's id); the customer's page
shows them within two seconds, and puts products on their list.

The page calls the services over TLS: your browser must trust the
development CA ($DEV_DIR/ca.pem), or start Chromium trusting the services' keys:
  chromium --user-data-dir=\$(mktemp -d) --ignore-certificate-errors-spki-list=$keys

TXT
cd clients/web && exec node_modules/.bin/vite --clearScreen false
