#!/usr/bin/env bash
# `make token ROLE=staff|customer|service [SUBJECT=...]`: prints a token
# signed with the development key of `make run`, valid for 12 hours. A
# customer token's SUBJECT is the customer's id; a service token's, the
# service's name. `make -s token ...` prints the token alone.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/lib.sh
if [ ! -f "$DEV_DIR/jwks.json" ]; then
  echo "no development credentials in $DEV_DIR: run make run first" >&2
  exit 1
fi
[ -x "$AGORA_DEV" ] || cargo build --quiet -p agora-dev
case "${ROLE:-}" in
  staff | customer | service) ;;
  *) echo "ROLE=${ROLE:-}: expected ROLE=staff, ROLE=customer SUBJECT=<customer_id> or ROLE=service SUBJECT=<name>" >&2; exit 2 ;;
esac
token "$ROLE" ${SUBJECT:+"$SUBJECT"}
