#!/usr/bin/env bash
# Builds the local cluster (hack/k8s: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kubelet and kube-proxy in one binary), kwok and crictl from Go modules,
# into a cache outside the repository keyed by the Kubernetes version and a digest of the
# wrapper's sources, so a warm run is a no-op. Prints the bin directory on stdout.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
k8s_version=$(awk '($1 == "k8s.io/kubernetes" || $2 == "k8s.io/kubernetes") && $NF ~ /^v1\./ {print $NF; exit}' "$here/k8s/go.mod")
kwok_version=${KWOK_VERSION:-v0.7.0}
crictl_version=${CRICTL_VERSION:-v1.34.0}
key=$(cat "$here/k8s/go.mod" "$here/k8s/go.sum" "$here/k8s/main.go" | sha256sum | cut -c1-12)
# The Go build cache outlives a run of this script, so a rebuild after a small change in the
# wrapper (a new component) takes minutes, not the cold build's half hour.
cache=${MNIST_K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mnist-operator/k8s}
bin="$cache/$k8s_version-$key/bin"

if [ ! -x "$bin/k8s" ]; then
  start=$(date +%s)
  mkdir -p "$bin.tmp"
  echo "building Kubernetes $k8s_version control plane into $bin (cold: 7-25 min on 2 cores, depending on load)" >&2
  minor=${k8s_version#v1.}; minor=${minor%%.*}
  (cd "$here/k8s" && go build -trimpath -o "$bin.tmp/k8s" -ldflags "-s -w \
      -X k8s.io/component-base/version.gitVersion=$k8s_version \
      -X k8s.io/component-base/version.gitMajor=1 \
      -X k8s.io/component-base/version.gitMinor=$minor \
      -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version \
      -X k8s.io/client-go/pkg/version.gitMajor=1 \
      -X k8s.io/client-go/pkg/version.gitMinor=$minor" .)
  for c in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
    ln -sf k8s "$bin.tmp/$c"
  done
  rm -rf "$bin" && mv "$bin.tmp" "$bin"
  echo "built in $(( $(date +%s) - start )) s, $(du -h "$bin/k8s" | cut -f1)" >&2
fi
if [ ! -x "$bin/kwok" ]; then
  start=$(date +%s)
  echo "building kwok $kwok_version into $bin" >&2
  GOBIN="$bin" GOFLAGS=-trimpath go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$kwok_version"
  echo "built kwok in $(( $(date +%s) - start )) s" >&2
fi
if [ ! -x "$bin/crictl" ]; then
  start=$(date +%s)
  echo "building crictl $crictl_version into $bin" >&2
  GOBIN="$bin" GOFLAGS=-trimpath go install -ldflags "-s -w" "sigs.k8s.io/cri-tools/cmd/crictl@$crictl_version"
  echo "built crictl in $(( $(date +%s) - start )) s" >&2
fi
echo "$bin"
