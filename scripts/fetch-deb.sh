#!/usr/bin/env bash
# fetch-deb.sh PACKAGE SUITE BINARY: downloads Debian PACKAGE from SUITE (e.g. trixie,
# bookworm) with the ordinary apt client — a private sources list and state dir under the
# cache folder — unpacks it into <cache>/<package>-<suite>, and prints the path of BINARY
# (relative to the package root, e.g. usr/sbin/nginx). Changes nothing system-wide.
set -euo pipefail
pkg=$1 suite=$2 rel=$3
cache="${FERRY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry}"
root="$cache/$pkg-$suite"
if [ -e "$root/$rel" ]; then echo "$root/$rel"; exit 0; fi
# Parallel test files may ask at once: one fetches, the others wait and reuse it.
mkdir -p "$cache"
exec 9>"$cache/.fetch-deb.lock"
command -v flock >/dev/null && flock 9
if [ -e "$root/$rel" ]; then echo "$root/$rel"; exit 0; fi
command -v apt-get >/dev/null || { echo "fetch-deb: apt-get is needed to fetch $pkg from Debian $suite" >&2; exit 1; }
apt_dir="$cache/apt-$suite"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial" "$root"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main" > "$apt_dir/sources.list"
opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=-"
      -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::Archives=$apt_dir/archives"
      -o "Dir::State::Status=/dev/null" -o "APT::Sandbox::User=$(id -un)" -o "Debug::NoLocking=1")
echo "fetch-deb: fetching $pkg from Debian $suite into $root" >&2
[ -n "$(ls -A "$apt_dir/lists" 2>/dev/null | grep -v partial)" ] || apt-get "${opts[@]}" -qq update >&2
( cd "$apt_dir/archives" && apt-get "${opts[@]}" -qq download "$pkg" >&2 )
deb=$(ls -t "$apt_dir"/archives/"${pkg}"_*.deb | head -1)
dpkg-deb -x "$deb" "$root"
[ -e "$root/$rel" ] || { echo "fetch-deb: $pkg has no $rel" >&2; exit 1; }
echo "$root/$rel"
