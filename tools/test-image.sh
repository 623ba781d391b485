#!/usr/bin/env bash
# `make test-image`: the catalog's image (made by `make image`) run for real
# by podman with runc, as a cluster runs it: read-only root, numeric
# non-root user, its TLS certificate, key and JWKS on a read-only volume,
# its SQLite database on a writable one. Checks: health SERVING on the
# plaintext admin port, one authenticated call over TLS on the gRPC port,
# and a clean exit (code 0) on SIGTERM within the stop timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/lib.sh

archive=target/image/agora-catalog.tar
[ -f "$archive" ] || { echo "no $archive: run make image first" >&2; exit 1; }
for tool in podman runc skopeo; do
  command -v "$tool" >/dev/null || { echo "make test-image needs $tool (Debian: apt-get install podman runc skopeo)" >&2; exit 1; }
done
cargo build --quiet -p agora-dev

work=$(mktemp -d)
name="agora-image-test-$$"
cleanup() {
  podman rm -f "$name" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# podman's defaults raise the container's rlimits (nofile, nproc), which a
# sandbox without CAP_SYS_RESOURCE refuses; the host's limits are kept instead.
printf '[containers]\ndefault_ulimits = []\n' >"$work/containers.conf"
export CONTAINERS_CONF="$work/containers.conf"
pod() { podman --runtime runc "$@"; }

# The archive is an OCI image of linux/amd64 (what docker load and kind take too).
format=$(skopeo inspect --format '{{.Os}}/{{.Architecture}} {{len .Layers}} layer(s)' "oci-archive:$archive")
echo "$archive: OCI archive, $format"
[[ "$format" == linux/amd64* ]] || { echo "$archive is not a linux/amd64 OCI image: $format" >&2; exit 1; }

image=$(pod load -q -i "$archive" | sed -n 's/^Loaded image: //p' | tail -n 1)
[ -n "$image" ] || { echo "podman load did not name the image of $archive" >&2; exit 1; }
echo "loaded $image"

# Development credentials, readable by the image's user (65532).
mkdir -p "$work/secrets" "$work/data"
target/debug/agora-dev init --dir "$work/secrets" >/dev/null
chmod 0644 "$work/secrets/catalog.key"
chown 65532:65532 "$work/data"
grpc_port=$((20000 + RANDOM % 20000))
admin_port=$((grpc_port + 1))

pod run -d --name "$name" --network host --read-only --cap-drop ALL \
  -v "$work/secrets:/run/agora:ro" -v "$work/data:/data" \
  -e AGORA_GRPC_ADDR="127.0.0.1:$grpc_port" -e AGORA_ADMIN_ADDR="127.0.0.1:$admin_port" \
  -e AGORA_DATABASE_URL=sqlite:/data/catalog.db \
  -e AGORA_TLS_CERT_FILE=/run/agora/catalog.pem -e AGORA_TLS_KEY_FILE=/run/agora/catalog.key \
  -e AGORA_TLS_CLIENT_CA_FILE=/run/agora/ca.pem -e AGORA_JWKS_FILE=/run/agora/jwks.json \
  -e AGORA_JWT_ISSUER=https://agora.local/dev-issuer -e AGORA_JWT_AUDIENCE=agora \
  -e AGORA_DRAIN_DELAY_MS=500 \
  "$image" >/dev/null

user=$(pod inspect "$name" --format '{{.Config.User}}')
[ "$user" = "65532:65532" ] || { echo "the container runs as $user, not 65532:65532" >&2; exit 1; }

for _ in $(seq 1 100); do
  serving "127.0.0.1:$admin_port" && break
  [ "$(pod inspect "$name" --format '{{.State.Running}}')" = true ] || break
  sleep 0.1
done
if ! serving "127.0.0.1:$admin_port"; then
  echo "the container is not SERVING after 10 s; its log ends with:" >&2
  pod logs "$name" 2>&1 | tail -n 10 >&2
  exit 1
fi
echo "health on the admin port: SERVING"

token=$(target/debug/agora-dev token staff --dir "$work/secrets")
answer=$("$GRPCURL" -cacert "$work/secrets/ca.pem" -max-time 5 -H "authorization: Bearer $token" \
  -d '{"family": {"display_name": "Lamps"}}' "localhost:$grpc_port" agora.catalog.v1.CatalogService/CreateFamily)
grep -q '"familyId": "fam_' <<<"$answer" || { echo "CreateFamily over TLS answered: $answer" >&2; exit 1; }
echo "an authenticated call over TLS: CreateFamily answered a family"

started=$(date +%s)
pod stop -t 30 "$name" >/dev/null
code=$(pod inspect "$name" --format '{{.State.ExitCode}}')
took=$(($(date +%s) - started))
if [ "$code" != 0 ]; then
  echo "the container exited with $code on SIGTERM; its log ends with:" >&2
  pod logs "$name" 2>&1 | tail -n 10 >&2
  exit 1
fi
pod logs "$name" 2>&1 | grep -q "stopped" || { echo "the log does not say the service stopped" >&2; exit 1; }
echo "SIGTERM: exit code 0 after ${took} s"
