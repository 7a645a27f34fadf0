# shellcheck shell=bash
# Sourced by the hack/install-*.sh scripts: apt_install WHO PACKAGE... installs the first of
# the given Debian packages that installs (alternatives, best first) with apt-get, through
# sudo when not root. apt's output goes to stderr; failures name WHO. Installs run one at a
# time (flock): test packages run in parallel and may each install something, and apt-get
# refuses to run beside another.

apt_install() {
  local who=$1
  shift
  local sudo=()
  if [[ "$(id -u)" != 0 ]]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "$who: installing $1 needs root (no sudo here)" >&2
      return 1
    fi
    sudo=(sudo -n)
  fi
  export DEBIAN_FRONTEND=noninteractive
  echo "$who: installing $1 with apt-get" >&2
  local lock=(flock --timeout 900 "${TMPDIR:-/tmp}/helixflow-apt.lock")
  "${sudo[@]}" "${lock[@]}" apt-get -o DPkg::Lock::Timeout=600 update -qq >&2
  local pkg
  for pkg in "$@"; do
    if "${sudo[@]}" "${lock[@]}" apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$pkg" >&2; then
      return 0
    fi
  done
  echo "$who: apt-get could not install any of: $*" >&2
  return 1
}
