#!/usr/bin/env bash
# The Go client: Go code generated from proto/ by Debian's protoc,
# protoc-gen-go and protoc-gen-go-grpc, into a GOPATH of its own
# (.gopath/, out of version control) beside Debian's Go packages
# (/usr/share/gocode: grpc-go, protobuf-go), in GOPATH mode: there is no Go
# module proxy to fetch from. Prints the environment to build with.
set -euo pipefail
cd "$(dirname "$0")"
packages="golang-go golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev"
packages="$packages protoc-gen-go protoc-gen-go-grpc protobuf-compiler"
for tool in go protoc protoc-gen-go protoc-gen-go-grpc; do
  command -v "$tool" >/dev/null || {
    echo "the Go client needs $tool (Debian: apt-get install $packages)" >&2
    exit 1
  }
done
# grpc-go's codec calls github.com/golang/protobuf, whose 1.3 API cannot
# marshal the messages protoc-gen-go makes today (a panic at the first call).
if command -v dpkg >/dev/null && ! dpkg -s golang-github-golang-protobuf-1-5-dev >/dev/null 2>&1; then
  echo "the Go client needs golang-github-golang-protobuf-1-5-dev (apt-get install $packages)" >&2
  exit 1
fi
out=.gopath/src
rm -rf "$out/agora"
mkdir -p "$out"
# The protos name no Go package: map each file to one (agora/gen/<context>/v1).
maps=()
for file in $(cd ../../proto && find agora -name '*.proto' | sort); do
  context=$(echo "$file" | cut -d/ -f2)
  maps+=("M$file=agora/gen/$context/v1;${context}v1")
done
go_opts=$(IFS=,; echo "${maps[*]}")
protoc -I ../../proto -I /usr/include \
  --go_out="$out" --go_opt="$go_opts" \
  --go-grpc_out="$out" --go-grpc_opt="$go_opts" \
  $(cd ../../proto && find agora -name '*.proto' | sort)
echo "GOPATH=$PWD/.gopath:/usr/share/gocode GO111MODULE=off"
