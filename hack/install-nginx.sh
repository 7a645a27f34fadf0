#!/usr/bin/env bash
# Makes sure Debian's nginx binary is available (the plain reverse proxy of the data-plane
# benchmark, and `nginx -t` checks of rendered configs). Does nothing when nginx is already
# installed; otherwise installs nginx-light (or nginx) with apt-get, through sudo when not root.
# Prints the binary's path on stdout; apt's output goes to stderr.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

find_nginx() {
  if command -v nginx >/dev/null 2>&1; then command -v nginx; return 0; fi
  if [[ -x /usr/sbin/nginx ]]; then echo /usr/sbin/nginx; return 0; fi
  return 1
}

if path="$(find_nginx)"; then
  echo "$path"
  exit 0
fi

apt_install install-nginx nginx-light nginx
if ! path="$(find_nginx)"; then
  echo "install-nginx: apt-get finished but no nginx binary was found" >&2
  exit 1
fi
echo "$path"
