#!/usr/bin/env bash
# Builds the test binaries (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, kwok) from Go modules into a cache folder shared by every clone of the repo, and
# does nothing when the pinned versions are already there. No download site is needed: only
# the Go module proxy. Prints the folder on stdout.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
k8s_version=v1.37.2
etcd_version=v3.7.3
kwok_version=v0.8.0
key="k8s-${k8s_version}_etcd-${etcd_version}_kwok-${kwok_version}"
dest="${HELIXFLOW_TESTBIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/helixflow/testbin/$key}"
stamp="$dest/.complete"
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)

# The stamp records what built the folder: the versions plus the go.sum of each module,
# so a dependency bump rebuilds and nothing else does.
want="$key $(cat "$here"/{k8s,etcd,kwok}/go.sum | sha256sum | cut -c1-16)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  ok=1
  for b in "${binaries[@]}" kwok-stages.yaml; do [[ -x "$dest/$b" || -f "$dest/$b" ]] || ok=0; done
  if [[ $ok == 1 ]]; then echo "$dest"; exit 0; fi
fi

mkdir -p "$dest"
rm -f "$stamp"
minor="${k8s_version#v1.}"; minor="${minor%%.*}"
# Without version ldflags the server reports v0.0.0-master and kubectl refuses to talk to it.
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=${k8s_version} -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=${minor} -X k8s.io/component-base/version.gitTreeState=clean"

log() { echo "testbin: $*" >&2; }
for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  log "building $b $k8s_version"
  (cd "$here/k8s" && go build -ldflags "$ldflags" -o "$dest/$b" "./cmd/$b")
done
log "building etcd $etcd_version"
(cd "$here/etcd" && go build -ldflags "-s -w" -o "$dest/etcd" ./cmd/etcd)
log "building kwok $kwok_version"
(cd "$here/kwok" && go build -ldflags "-s -w" -o "$dest/kwok" sigs.k8s.io/kwok/cmd/kwok)

# kwok needs stage definitions to move simulated nodes and pods through their lifecycle.
kwok_dir="$(cd "$here/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
{
  cat "$kwok_dir/kustomize/stage/node/fast/node-initialize.yaml"
  for s in pod-ready pod-complete pod-delete; do
    echo "---"
    cat "$kwok_dir/kustomize/stage/pod/fast/$s.yaml"
  done
} > "$dest/kwok-stages.yaml"

echo "$want" > "$stamp"
log "done: $dest"
echo "$dest"
