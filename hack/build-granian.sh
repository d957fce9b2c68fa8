#!/usr/bin/env bash
# Builds the model server's HTTP server, Granian with fast refusals (third_party/granian, see its
# PATCHED.md), into a wheel for the given Python, cached outside the repository by a digest of
# its sources and that Python's version, so a warm run is a no-op. Copies the wheel into wheels/
# (where Dockerfile.server looks for it) and prints its path on stdout.
#
#   bash hack/build-granian.sh [python]      # default: python3
#
# Needs Rust (cargo, 1.85 or later) and the crate registry; cold, about 11 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${1:-python3}
maturin_version=1.16.0
src=third_party/granian
cache=${XDG_CACHE_HOME:-$HOME/.cache}/mnist-operator/granian
py_tag=$("$python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
key=$( (cd "$src" && find . -type f -not -name '*.pyc' | LC_ALL=C sort | xargs sha256sum; echo "$py_tag") \
  | sha256sum | cut -c1-16)
out="$cache/wheel-$key"

if ! ls "$out"/granian-*.whl >/dev/null 2>&1; then
  export PATH="$PATH:$HOME/.cargo/bin"
  command -v cargo >/dev/null || { echo "Rust (cargo) is required to build $src" >&2; exit 1; }
  start=$(date +%s)
  echo "building $src for $py_tag into $out (cold: about 11 minutes on 2 cores)" >&2
  if [ ! -x "$cache/maturin-$maturin_version/bin/maturin" ]; then
    "$python" -m venv "$cache/maturin-$maturin_version"
    "$cache/maturin-$maturin_version/bin/pip" install --quiet "maturin==$maturin_version"
  fi
  rm -rf "$out.tmp"
  # One target directory for every build: a changed source recompiles Granian, not its crates.
  CARGO_TARGET_DIR="$cache/target" "$cache/maturin-$maturin_version/bin/maturin" build \
    --quiet --release --locked --features jemalloc --manifest-path "$src/Cargo.toml" \
    --interpreter "$python" --out "$out.tmp" >&2
  rm -rf "$out" && mv "$out.tmp" "$out"
  echo "built $(basename "$out"/granian-*.whl) in $(( $(date +%s) - start )) s" >&2
fi
wheel=$(ls "$out"/granian-*.whl)
mkdir -p wheels
rm -f wheels/granian-*.whl
cp "$wheel" wheels/
echo "$PWD/wheels/$(basename "$wheel")"
