#!/usr/bin/env bash
# Installs the real client libraries of the data-plane tests (the official `openai` npm SDK,
# pinned in test/clients/node/package-lock.json) into test/clients/node/node_modules with
# `npm ci`. Does nothing when that folder already matches package.json and the lock file, so
# tests may call it every run. Needs node >= 20 and npm (Debian: apt-get install nodejs npm).
# Prints the folder (test/clients/node) on stdout; npm's output goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dir="$(cd "$here/../test/clients/node" && pwd)"
stamp="$dir/node_modules/.helixflow-install-stamp"

for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "npm-install: $tool is not installed (Debian: apt-get install -y nodejs npm)" >&2
    exit 1
  fi
done

# The stamp records what was installed: the lock file, package.json and node's major version.
node_version="$(node --version)"; node_major="${node_version#v}"; node_major="${node_major%%.*}"
want="$(cat "$dir/package.json" "$dir/package-lock.json" | sha256sum | cut -c1-16) node-$node_major"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -f "$dir/node_modules/openai/package.json" ]]; then
  echo "$dir"
  exit 0
fi

echo "npm-install: npm ci in $dir" >&2
rm -f "$stamp"
(cd "$dir" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error) >&2
echo "$want" >"$stamp"
echo "$dir"
