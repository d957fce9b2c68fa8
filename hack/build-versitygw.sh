#!/usr/bin/env bash
# Builds versitygw (the Versity S3 gateway: a real S3 API over a directory, which checks request
# signatures) from its Go module into a cache outside the repository, keyed by its version, so a
# warm run is a no-op. The storage tests (tests/realnode/test_storage.py, tests/e2e/
# test_model_fetch.py) start it as their object store. Prints the binary's path on stdout.
set -euo pipefail
version=${VERSITYGW_VERSION:-v1.7.0}
cache=${MNIST_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mnist-operator/tools}
bin="$cache/versitygw-$version"

if [ ! -x "$bin/versitygw" ]; then
  command -v go >/dev/null || { echo "Go is required to build versitygw" >&2; exit 1; }
  start=$(date +%s)
  echo "building versitygw $version into $bin (cold: a few minutes on 2 cores)" >&2
  mkdir -p "$bin.tmp"
  GOBIN="$bin.tmp" GOFLAGS=-trimpath go install -ldflags "-s -w" \
    "github.com/versity/versitygw/cmd/versitygw@$version"
  rm -rf "$bin" && mv "$bin.tmp" "$bin"
  echo "built versitygw in $(( $(date +%s) - start )) s, $(du -h "$bin/versitygw" | cut -f1)" >&2
fi
echo "$bin/versitygw"
