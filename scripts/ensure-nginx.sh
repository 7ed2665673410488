#!/usr/bin/env bash
# Prints the path of an nginx with the slice module (the peer bench:distributor compares
# against): $FERRY_NGINX, nginx on PATH, else Debian bookworm's package fetched into a
# cache folder by fetch-deb.sh (nothing installed system-wide).
set -euo pipefail
here=$(dirname "$0")
has_slice() { "$1" -V 2>&1 | grep -q -- --with-http_slice_module; }
for cand in "${FERRY_NGINX:-}" "$(command -v nginx 2>/dev/null || true)" /usr/sbin/nginx; do
  if [ -n "$cand" ] && [ -x "$cand" ] && has_slice "$cand"; then echo "$cand"; exit 0; fi
done
"$here/fetch-deb.sh" nginx bookworm usr/sbin/nginx
