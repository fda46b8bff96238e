#!/usr/bin/env bash
# Give the Go client (clients/go) the module path your organisation serves it under, e.g.
# the repository's path on your Git host plus /clients/go:
#
#   scripts/go_module_path.sh git.corp.example/platform/registry-gateway/clients/go [ROOT]
#
# Rewrites the path everywhere it is written: buf.gen.go.yaml's M options (the import path
# `make generate` gives the proto), the go.mod of clients/go and of clients/go/example, the
# Go imports and clients/go/README.md; then gofmt. The generated code does not hold the path,
# so `make generate` (scripts/gen_protos.py --check) stays clean. ROOT defaults to this
# checkout. Needs go (scripts/go_toolchain.sh) for `go mod edit` and gofmt.
set -euo pipefail

say() { printf 'go_module_path: %s\n' "$*" >&2; }

[[ $# -ge 1 && $# -le 2 ]] || {
    say "usage: $0 NEW_MODULE_PATH [ROOT]"
    exit 2
}
readonly new=$1
readonly root=${2:-$(cd "$(dirname "$0")/.." && pwd)}
readonly client=$root/clients/go

# What `go get` can fetch: a host name (a dot) first, then path elements Go accepts.
if [[ ${new%%/*} != *.* ]] || ! [[ $new =~ ^[A-Za-z0-9][-A-Za-z0-9._~/]*[A-Za-z0-9]$ ]]; then
    say "ERROR: $new is not a module path tooling can fetch (its first element needs a dot)"
    exit 2
fi
old=$(awk '$1 == "module" { print $2; exit }' "$client/go.mod")
readonly old
if [[ $old == "$new" ]]; then
    say "already $new"
    exit 0
fi

# The old path as a literal in a sed pattern.
old_pattern=$(printf '%s' "$old" | sed 's/[.[\*^$/#]/\\&/g')
readonly old_pattern
mapfile -t files < <(
    printf '%s\n' "$root/buf.gen.go.yaml" "$client/README.md"
    find "$client" -name '*.go' -o -name go.mod
)
for file in "${files[@]}"; do
    [[ -f $file ]] && sed -i "s#${old_pattern}#${new}#g" "$file"
done
# The module lines again through go itself, so that what go reads is what was meant.
(cd "$client" && go mod edit -module "$new")
(cd "$client/example" && go mod edit -module "$new/example")
gofmt -w "$client"
say "clients/go is now $new (was $old); regenerate with make generate, check with git diff"
