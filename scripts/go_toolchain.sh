#!/usr/bin/env bash
# Make sure Debian's Go toolchain, the protoc plugins and the gRPC/protobuf Go sources are
# installed: what `make generate` needs to write clients/go and the tests need to build it.
#
#   scripts/go_toolchain.sh          install what is missing (apt-get, as root), else nothing
#
# Everything comes from Debian's packages (bookworm: Go 1.19, grpc-go 1.33, protobuf-go
# 1.28): the Go module proxy is out of reach here, so the client builds in GOPATH mode
# against /usr/share/gocode. Exits non-zero, saying why, when it cannot install them.
set -euo pipefail

readonly PACKAGES=(
    golang-go
    protoc-gen-go
    protoc-gen-go-grpc
    golang-google-grpc-dev
    golang-google-protobuf-dev
    golang-google-genproto-dev
    # grpc-go 1.33 marshals through github.com/golang/protobuf; its Debian package accepts
    # v1.3 or v1.5, and apt picks v1.3, which cannot encode protobuf-go (APIv2) messages.
    golang-github-golang-protobuf-1-5-dev
)
readonly GOCODE=/usr/share/gocode/src

say() { printf 'go_toolchain: %s\n' "$*" >&2; }

present() {
    command -v go >/dev/null 2>&1 &&
        command -v protoc-gen-go >/dev/null 2>&1 &&
        command -v protoc-gen-go-grpc >/dev/null 2>&1 &&
        [[ -d $GOCODE/google.golang.org/grpc ]] &&
        [[ -d $GOCODE/google.golang.org/protobuf ]] &&
        [[ -d $GOCODE/google.golang.org/genproto/googleapis/rpc/errdetails ]] &&
        grep -qs google.golang.org/protobuf "$GOCODE/github.com/golang/protobuf/proto/proto.go"
}

if present; then
    exit 0
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    say "ERROR: the Go toolchain is missing and this is not root on Debian; install: ${PACKAGES[*]}"
    exit 1
fi
say "installing ${PACKAGES[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have no package lists yet: update once, only if the install needs it.
if ! apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null 2>&1 || true
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null ||
        {
            say "ERROR: apt-get install ${PACKAGES[*]} failed"
            exit 1
        }
fi
present || {
    say "ERROR: installed ${PACKAGES[*]}, but go, the plugins or the Go sources are still missing"
    exit 1
}
