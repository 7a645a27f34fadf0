#!/usr/bin/env bash
# Makes sure Debian's chromium is available (the real browser of the data-plane tests: CORS
# and the WebSocket from a web page). Does nothing when it is already installed; otherwise
# installs it with apt-get, through sudo when not root. Prints the binary's path on stdout;
# apt's output goes to stderr.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

find_chromium() {
  local name
  for name in chromium chromium-browser; do
    if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
  done
  return 1
}

if path="$(find_chromium)"; then
  echo "$path"
  exit 0
fi

apt_install install-chromium chromium
if ! path="$(find_chromium)"; then
  echo "install-chromium: apt-get finished but no chromium binary was found" >&2
  exit 1
fi
echo "$path"
