#!/usr/bin/env bash
# Install the Debian packages of the real servers and tools the test suite starts itself
# (on 127.0.0.1, ephemeral ports). Nothing is started here: each test fixture starts and
# stops what it needs. Installs only what is missing, so a second run costs nothing.
#
#   socat             pty pairs for the serial drivers (SML, Modbus RTU)
#   influxd           InfluxDB 1.6.7: the archive's read-back with InfluxQL (tests/archive)
#   victoria-metrics  serves /api/v2/write natively: the archive's v2 write path (tests/archive)
#   prometheus        scrapes the metrics face; promtool checks metrics, rules and rule tests
#
# Debian's packages try to start their services; there is no init system on the CI machines
# and policy-rc.d refuses, which is what we want: the tests start their own instances.
set -euo pipefail

# binary -> Debian package
declare -A NEEDED=(
  [socat]=socat
  [influxd]=influxdb
  [victoria-metrics]=victoria-metrics
  [prometheus]=prometheus
  [promtool]=prometheus
)

missing=()
for binary in "${!NEEDED[@]}"; do
  command -v "$binary" >/dev/null 2>&1 || missing+=("${NEEDED[$binary]}")
done
# One package can provide several binaries (prometheus, promtool): ask apt for it once.
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')

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
