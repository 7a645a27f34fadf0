#!/usr/bin/env bash
# Makes sure Debian's nginx binary is available (the plain reverse proxy of the data-plane
# benchmark, and `nginx -t` checks of rendered configs). Does nothing when nginx is already
# installed; otherwise installs nginx-light (or nginx) with apt-get, through sudo when not root.
# Prints the binary's path on stdout; apt's output goes to stderr.
set -euo pipefail

find_nginx() {
  if command -v nginx >/dev/null 2>&1; then command -v nginx; return 0; fi
  if [[ -x /usr/sbin/nginx ]]; then echo /usr/sbin/nginx; return 0; fi
  return 1
}

if path="$(find_nginx)"; then
  echo "$path"
  exit 0
fi

sudo=()
if [[ "$(id -u)" != 0 ]]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "install-nginx: nginx is missing and installing it needs root (no sudo here)" >&2
    exit 1
  fi
  sudo=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
echo "install-nginx: installing nginx with apt-get" >&2
"${sudo[@]}" apt-get update -qq >&2
if ! "${sudo[@]}" apt-get install -y -qq --no-install-recommends nginx-light >&2; then
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends nginx >&2
fi
if ! path="$(find_nginx)"; then
  echo "install-nginx: apt-get finished but no nginx binary was found" >&2
  exit 1
fi
echo "$path"
