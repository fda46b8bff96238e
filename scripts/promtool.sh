#!/usr/bin/env bash
# Runs promtool with the given arguments; installs Debian's `prometheus` package (which
# ships promtool) when it is missing. Fails loudly when it cannot get one.
set -euo pipefail
if ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "promtool: installing Debian's prometheus package" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null; }
  fi
fi
command -v promtool >/dev/null 2>&1 || {
  echo "promtool not found and could not be installed (apt-get install prometheus)" >&2
  exit 1
}
exec promtool "$@"
