#!/usr/bin/env bash
# Prints the path of a nats-server >= 2.10 on stdout: $FERRY_NATS_SERVER, nats-server on
# PATH (if >= 2.10), else Debian trixie's package fetched into a cache folder by
# fetch-deb.sh (nothing installed system-wide). Progress goes to stderr.
set -euo pipefail
here=$(dirname "$0")

version_ok() { # $1 = binary; true when it reports >= 2.10
  local v maj min
  v=$("$1" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1) || return 1
  [ -n "$v" ] || return 1
  maj=${v%%.*}; min=${v#*.}; min=${min%%.*}
  [ "$maj" -gt 2 ] || { [ "$maj" -eq 2 ] && [ "$min" -ge 10 ]; }
}

for cand in "${FERRY_NATS_SERVER:-}" "$(command -v nats-server 2>/dev/null || true)"; do
  if [ -n "$cand" ] && [ -x "$cand" ] && version_ok "$cand"; then echo "$cand"; exit 0; fi
done
bin=$("$here/fetch-deb.sh" nats-server trixie usr/sbin/nats-server)
version_ok "$bin" || { echo "ensure-nats-server: $bin is not >= 2.10" >&2; exit 1; }
echo "$bin"
