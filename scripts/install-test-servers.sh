#!/usr/bin/env bash
# Install the Debian packages of the real servers and tools the test suite starts itself
# (on 127.0.0.1, ephemeral ports). Nothing is started here: each test fixture starts and
# stops what it needs. Installs only what is missing, so a second run costs nothing.
set -euo pipefail

# binary -> Debian package
declare -A NEEDED=(
  [socat]=socat
)

missing=()
for binary in "${!NEEDED[@]}"; do
  command -v "$binary" >/dev/null 2>&1 || missing+=("${NEEDED[$binary]}")
done

if ((${#missing[@]} == 0)); then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
