#!/usr/bin/env bash
# `make context-check`: `make context` proven on a scratch copy of the tree.
# It generates a context that follows an upstream, then runs there what a
# change must pass: `make lint`, the new crate's tests (SQLite and
# PostgreSQL), the context-map test, `make deploy-check`, and a `make run`
# that serves five contexts, with a call to the new one. It fails if the
# generator leaves the tree unbuildable, or if this tree changed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
name=${CONTEXT_NAME:-reviews}
upstreams=${CONTEXT_UPSTREAMS:-catalog}
# The scratch copy builds into target/context-check (its own: binaries of the
# same names must not replace this tree's); make run and agora-dev follow.
export CARGO_TARGET_DIR=$root/target/context-check
source tools/lib.sh

# This tree, as git sees it: what must be the same at the end.
state() {
  git status --porcelain=v1 --untracked-files=all
  git diff HEAD --binary | sha256sum
  git ls-files -o --exclude-standard -z | xargs -0 -r sha256sum
}
before=$(state)

[ -x tools/.venv/bin/python ] || python3 -m venv tools/.venv
tools/.venv/bin/pip install --quiet --disable-pip-version-check -r clients/python/requirements.txt
if agora_running; then
  echo "make context-check runs make run on the same ports: stop the running system first (make stop)" >&2
  exit 1
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/agora-context-check.XXXXXX")
stop_scratch() {
  (cd "$scratch" && tools/stop.sh >/dev/null 2>&1) || true
  rm -rf "$scratch"
}
trap stop_scratch EXIT
# The tree as it is (committed or not), without what git ignores.
git ls-files -co --exclude-standard -z | tar --null -cf - -T - | tar -xf - -C "$scratch"
# Tools installed here are reused, not installed again.
ln -s "$root/tools/.venv" "$scratch/tools/.venv"
[ -d tools/node_modules ] && ln -s "$root/tools/node_modules" "$scratch/tools/node_modules"
step() { echo; echo "== make context-check: $*"; }
cd "$scratch"
step "names that are taken or invalid are refused, and nothing is written"
# Every file of the scratch tree and its content, tools installed aside.
snapshot() {
  find . \( -path ./tools/.venv -o -path ./tools/node_modules -o -name refused.log \) -prune -o -type f -print0 |
    sort -z | xargs -0 sha256sum | sha256sum
}
copied=$(snapshot)
for bad in "catalog" "Reviews" "re-views" "x" "platform" "$name UPSTREAMS=offers" "$name UPSTREAMS=nowhere"; do
  set -- $bad
  if make -s context NAME="$1" ${2:+"$2"} >"$scratch/refused.log" 2>&1; then
    echo "make context NAME=$bad was accepted" >&2; exit 1
  fi
  grep -q "^make context: " "$scratch/refused.log" || { cat "$scratch/refused.log" >&2; exit 1; }
  sed -n 1p "$scratch/refused.log"
done
if [ "$(snapshot)" != "$copied" ]; then
  echo "a refused make context wrote into the tree" >&2; exit 1
fi
step "make context NAME=$name UPSTREAMS=$upstreams"
make -s context NAME="$name" UPSTREAMS="$upstreams"
step "make lint"
make lint
step "the new crate's tests and the context map's"
cargo nextest run -p "agora-$name" --no-fail-fast
cargo test -q -p agora-contracts --test context_map
step "make deploy-check"
make deploy-check
step "make run: five contexts"
log=$scratch/run.log
tools/run.sh >"$log" 2>&1 &
runner=$!
for _ in $(seq 1 1800); do
  grep -q "Agora is running" "$log" && break
  kill -0 "$runner" 2>/dev/null || { cat "$log" >&2; echo "make run exited before every service was SERVING" >&2; exit 1; }
  sleep 1
done
grep -q "Agora is running" "$log" || { tail -n 20 "$log" >&2; echo "make run did not start in 30 minutes" >&2; exit 1; }
served=$(grep -cE "^  [a-z0-9]+ +gRPC \(TLS\)" "$log")
[ "$served" = 5 ] || { cat "$log" >&2; echo "make run serves $served contexts, not 5" >&2; exit 1; }
port=$(python3 tools/contexts.py | awk -v name="$name" '$1 == name { print $2 }')
agg=$(grep -oE "service [A-Za-z]+Service" "proto/agora/$name/v1/${name}_service.proto" | head -n 1 | sed 's/service //; s/Service$//')
staff=$(token staff)
call() { tls -H "authorization: Bearer $staff" -d "$2" "127.0.0.1:$1" "${@:3}"; }
product=$(call 50051 '{"page_size": 1}' agora.catalog.v1.CatalogService/ListProducts | python3 -c 'import json,sys; print(json.load(sys.stdin)["products"][0]["productId"])')
created=$(call "$port" "{\"request_id\": \"check-1\", \"${agg,}\": {\"title\": \"First\", \"product_id\": \"$product\"}}" \
  "agora.$name.v1.${agg}Service/Create${agg}")
echo "$created"
id=$(python3 -c 'import json,sys; d=json.load(sys.stdin); print(next(iter(d.values()))[sys.argv[1]])' "${agg,}Id" <<<"$created")
call "$port" "{\"${agg,}_id\": \"$id\"}" "agora.$name.v1.${agg}Service/Get${agg}" | grep -q '"title": "First"'
tools/stop.sh
wait "$runner" || true

cd "$root"
after=$(state)
if [ "$before" != "$after" ]; then
  echo "make context-check changed this tree:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
echo
echo "make context-check: $name generated, linted, tested, deployable and served beside the four; this tree unchanged"
