#!/usr/bin/env bash
# Prints one JSON line locating the real bootloader environment tools:
#   {"fwPrintenv": ..., "fwSetenv": ..., "grubEditenv": ..., "ldLibraryPath": ...}
# from PATH when installed (Debian libubootenv-tool, grub-common), else from Debian
# bookworm's packages unpacked into a cache folder by fetch-deb.sh (nothing system-wide).
set -euo pipefail
here=$(dirname "$0")
lib=""
if command -v fw_printenv >/dev/null && command -v fw_setenv >/dev/null; then
  pr=$(command -v fw_printenv); se=$(command -v fw_setenv)
else
  pr=$("$here/fetch-deb.sh" libubootenv-tool bookworm usr/bin/fw_printenv)
  se="$(dirname "$pr")/fw_setenv"
  so=$("$here/fetch-deb.sh" libubootenv0.1 bookworm "usr/lib/$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)/libubootenv.so.0")
  lib=$(dirname "$so")
fi
if command -v grub-editenv >/dev/null; then ge=$(command -v grub-editenv); else ge=$("$here/fetch-deb.sh" grub-common bookworm usr/bin/grub-editenv); fi
printf '{"fwPrintenv":"%s","fwSetenv":"%s","grubEditenv":"%s","ldLibraryPath":"%s"}\n' "$pr" "$se" "$ge" "$lib"
