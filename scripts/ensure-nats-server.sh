#!/usr/bin/env bash
# Prints the path of a nats-server >= 2.10 on stdout.
# Order: $FERRY_NATS_SERVER, nats-server on PATH (if >= 2.10), the cached copy,
# else download Debian trixie's package with the ordinary apt client (a private
# sources list and state dir under the cache folder) and unpack it there.
# Changes nothing system-wide. Progress goes to stderr.
set -euo pipefail
cache="${FERRY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry}"
want_major=2; want_minor=10

version_ok() { # $1 = binary
  local v; v=$("$1" --version 2>/dev/null | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1) || return 1
  [ -n "$v" ] || return 1
  local maj min; maj=${v%%.*}; min=${v#*.}; min=${min%%.*}
  [ "$maj" -gt "$want_major" ] || { [ "$maj" -eq "$want_major" ] && [ "$min" -ge "$want_minor" ]; }
}

for cand in "${FERRY_NATS_SERVER:-}" "$(command -v nats-server 2>/dev/null || true)" "$cache/nats/usr/sbin/nats-server"; do
  if [ -n "$cand" ] && [ -x "$cand" ] && version_ok "$cand"; then echo "$cand"; exit 0; fi
done

command -v apt-get >/dev/null || { echo "ensure-nats-server: no nats-server >= 2.10 on PATH and no apt-get to fetch one; install nats-server 2.10+ or set FERRY_NATS_SERVER" >&2; exit 1; }
apt_dir="$cache/apt"; mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$cache/nats"
cat > "$apt_dir/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
SRC
opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=-" \
      -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::Archives=$apt_dir/archives" \
      -o "Dir::State::Status=/dev/null" -o "APT::Sandbox::User=$(id -un)" -o "Debug::NoLocking=1")
echo "ensure-nats-server: fetching nats-server from Debian trixie into $cache/nats" >&2
apt-get "${opts[@]}" -qq update >&2
( cd "$apt_dir/archives" && apt-get "${opts[@]}" -qq download nats-server >&2 )
deb=$(ls -t "$apt_dir"/archives/nats-server_*.deb | head -1)
dpkg-deb -x "$deb" "$cache/nats"
bin="$cache/nats/usr/sbin/nats-server"
version_ok "$bin" || { echo "ensure-nats-server: downloaded $bin is not >= 2.10" >&2; exit 1; }
echo "$bin"
