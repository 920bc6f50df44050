#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian machine, then runs them.
# This is the README's test command, and .ci/run calls it, so the two never drift.
set -euo pipefail
cd "$(dirname "$0")/.."

# Real peers used by the tests: dnsmasq (an independent DNS server), blackbox_exporter
# (the reference for /probe output), iproute2/nftables (network namespaces for faults).
APT_PACKAGES=(dnsmasq-base prometheus-blackbox-exporter iproute2 nftables)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

python3 -m pip install -q -e '.[test,fast]'
python3 -m pytest -q "$@"
