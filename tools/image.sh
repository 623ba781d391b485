#!/usr/bin/env bash
# `make image`: an OCI image per service, built without a container engine
# daemon and without pulling anything. The binary (cargo profile dist:
# whole-program optimised) is stripped and
# put on a root assembled here with exactly the shared libraries it links
# (ldd), the public CA bundle, a numeric user and nsswitch.conf; buildah
# builds deploy/image/Dockerfile (FROM scratch) on it and writes an OCI
# archive, target/image/agora-<service>.tar, that `podman load`,
# `docker load` and `kind load image-archive` take.
#
# ONLY="catalog offers" limits the services; TAG (default dev) tags
# them; PROFILE (default dist) picks the cargo profile.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/lib.sh

PROFILE=${PROFILE:-dist}
TAG=${TAG:-dev}
target_dir=target/$([ "$PROFILE" = dev ] && echo debug || echo "$PROFILE")
out=target/image
all=()
for s in "${SERVICES[@]}"; do set -- $s; all+=("$1"); done
read -r -a wanted <<<"${ONLY:-${all[*]}}"

for tool in buildah ldd strip; do
  command -v "$tool" >/dev/null || {
    echo "make image needs $tool (Debian: apt-get install buildah binutils libc-bin)" >&2
    exit 1
  }
done
[ -f /etc/ssl/certs/ca-certificates.crt ] || {
  echo "make image needs the CA bundle /etc/ssl/certs/ca-certificates.crt (Debian: apt-get install ca-certificates)" >&2
  exit 1
}

# agora_build_info names the commit the image was built from.
AGORA_BUILD_COMMIT=${AGORA_BUILD_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)} \
  cargo build --profile "$PROFILE" $(for s in "${wanted[@]}"; do echo "-p agora-$s"; done)
mkdir -p "$out"

for s in "${SERVICES[@]}"; do
  set -- $s
  name=$1 grpc_port=$2 admin_port=$3
  [[ " ${wanted[*]} " == *" $name "* ]] || continue
  context="$out/$name"
  root="$context/rootfs"
  rm -rf "$context"
  mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs"
  strip -o "$root/usr/local/bin/agora" "$target_dir/agora-$name"
  # Exactly the libraries the binary links, at the paths it looks for them.
  for lib in $(ldd "$root/usr/local/bin/agora" | awk '/=> \// {print $3} /^\t\/.*ld-linux/ {print $1}'); do
    cp --parents -L "$lib" "$root/"
  done
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  echo "agora:x:65532:65532:agora:/nonexistent:/sbin/nologin" >"$root/etc/passwd"
  echo "agora:x:65532:" >"$root/etc/group"
  echo "hosts: files dns" >"$root/etc/nsswitch.conf"

  image="agora-$name:$TAG"
  buildah bud --quiet --format oci --layers=false \
    --build-arg SERVICE="$name" --build-arg GRPC_PORT="$grpc_port" --build-arg ADMIN_PORT="$admin_port" \
    -f deploy/image/Dockerfile -t "$image" "$context" >/dev/null
  rm -f "$out/agora-$name.tar"
  buildah push --quiet "$image" "oci-archive:$out/agora-$name.tar:$image" >/dev/null
  size=$(du -sk "$root" | cut -f1)
  archive=$(du -k "$out/agora-$name.tar" | cut -f1)
  awk -v i="$image" -v f="$out/agora-$name.tar" -v s="$size" -v a="$archive" \
    'BEGIN { printf "%-18s %s: %.1f MB unpacked, %.1f MB archive\n", i, f, s / 1024, a / 1024 }'
done
