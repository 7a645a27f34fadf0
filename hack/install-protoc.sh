#!/usr/bin/env bash
# Makes sure protoc (Debian's protobuf-compiler, 3.21) is available for `make proto`. Does
# nothing when protoc is already installed; otherwise installs it with apt-get, through sudo
# when not root. Prints the binary's path on stdout; apt's output goes to stderr.
#
# Why Debian's protoc rather than buf from Go modules: a cold `go build` of
# github.com/bufbuild/buf v1.75.0 took 7.5 minutes on a 2-core machine (plus 2.5 minutes of
# module downloads), while this install takes about 15 seconds. The code generators themselves
# (protoc-gen-go, protoc-gen-go-grpc) are pinned Go tools in hack/tools/go.mod.
# The generated files name the protoc version in their header, so `make verify` expects the
# version below; a different protoc fails the drift check instead of passing silently.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/apt.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apt.sh"

want_version="3.21.12"

find_protoc() {
  if command -v protoc >/dev/null 2>&1; then command -v protoc; return 0; fi
  if [[ -x /usr/bin/protoc ]]; then echo /usr/bin/protoc; return 0; fi
  return 1
}

if ! path="$(find_protoc)"; then
  apt_install install-protoc protobuf-compiler
  if ! path="$(find_protoc)"; then
    echo "install-protoc: apt-get finished but no protoc binary was found" >&2
    exit 1
  fi
fi

got="$("$path" --version)"
if [[ "$got" != "libprotoc $want_version" ]]; then
  echo "install-protoc: warning: $path is '$got', the generated code expects libprotoc $want_version" >&2
fi
echo "$path"
