#!/usr/bin/env bash
# Installs the Debian packages the project needs that a new machine lacks (apt-get, as root).
# Without root it installs nothing and says what is missing: the local cluster then runs
# without its real node (kwok only), and the tests that need one are skipped with the reason.
#
#   bash hack/debian-packages.sh          # used by .ci/run and `make demo` / `make test`
set -euo pipefail

# Prometheus (promtool) for the alert and dashboard tests, Lua 5.1 for Argo CD's health check,
# wrk for the benchmark, openssl for the cluster's credentials; and for the real node:
# containerd, runc, the CNI plugins, iptables, iproute2 and conntrack, buildah and debootstrap
# for the images, gcc and libc6-dev for the static pause binary.
debs=(openssl make prometheus lua5.1 wrk
      containerd runc containernetworking-plugins iptables iproute2 conntrack
      buildah debootstrap gcc libc6-dev)

missing=()
for pkg in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "not root: cannot install ${missing[*]} (the real node and some tests need them; see README.md)" >&2
  exit 0
fi
echo "apt-get install ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
