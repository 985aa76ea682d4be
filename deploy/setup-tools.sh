#!/usr/bin/env bash
# The real tools the deploy tests run: promtool and prometheus (Debian package `prometheus`), amtool
# (`prometheus-alertmanager`), and the headless browser the report tests render HTML in (`chromium`). Quick
# when they are on PATH; otherwise installs them with apt-get, without starting the services the packages
# ship (we run our own instances on loopback ports).
set -euo pipefail

TOOLS=(promtool prometheus amtool chromium)
PACKAGES=(prometheus prometheus-alertmanager chromium)

missing() {
  local tool
  for tool in "${TOOLS[@]}"; do
    command -v "$tool" >/dev/null 2>&1 || echo "$tool"
  done
}

if [ -z "$(missing)" ]; then
  exit 0
fi

hint="install them yourself (Debian/Ubuntu: apt-get install --no-install-recommends ${PACKAGES[*]}; \
elsewhere: the Prometheus 2.x and Alertmanager release archives, and a Chromium) and put them on PATH"

if ! command -v apt-get >/dev/null 2>&1; then
  echo "deploy/setup-tools.sh: missing $(missing | tr '\n' ' ')and no apt-get here: $hint" >&2
  exit 1
fi
if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "deploy/setup-tools.sh: missing $(missing | tr '\n' ' ')and not root (nor passwordless sudo): $hint" >&2
  exit 1
fi

echo "deploy/setup-tools.sh: installing ${PACKAGES[*]} (for $(missing | tr '\n' ' ' | sed 's/ $//'))" >&2
# Keep apt from starting the packaged services (policy-rc.d exit 101 = "not now"), unless a policy exists.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
  "${as_root[@]}" chmod 755 "$policy"
  trap '"${as_root[@]}" rm -f "$policy"' EXIT
fi
export DEBIAN_FRONTEND=noninteractive
apt_install() {
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}
if ! apt_install 2>/dev/null; then
  "${as_root[@]}" apt-get update -qq >/dev/null
  apt_install
fi

if [ -n "$(missing)" ]; then
  echo "deploy/setup-tools.sh: still missing $(missing | tr '\n' ' ')after installing ${PACKAGES[*]}: $hint" >&2
  exit 1
fi
