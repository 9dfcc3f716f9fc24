#!/usr/bin/env bash
# Create (or reuse) the Ansible tool venv used by `make ansible-check` and tests/ansible/.
#
# Ansible lives in its own venv because it pulls in jinja2, ruamel, black and yamllint,
# which have no business in the appliance's venv. The versions are pinned: the roles and
# the lint rules are checked against exactly these.
#
#   scripts/ansible-venv.sh [VENV_DIR]      # default: .venv-ansible at the repository root
#
# Prints the venv's bin directory on stdout (the last line); installs nothing when the venv
# already has the pinned versions, so a second call costs well under a second.
set -euo pipefail

ANSIBLE_CORE_VERSION=2.19.14
ANSIBLE_LINT_VERSION=26.10.1

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$repo/.venv-ansible}
python=${PYTHON:-python3}
stamp="$venv/.installed-ansible-core-$ANSIBLE_CORE_VERSION-lint-$ANSIBLE_LINT_VERSION"

if [[ -f $stamp && -x $venv/bin/ansible-playbook && -x $venv/bin/ansible-lint ]]; then
  echo "$venv/bin"
  exit 0
fi

if [[ ! -x $venv/bin/python ]]; then
  "$python" -m venv "$venv" >&2
fi
# The dependencies come from the same package index as this machine's pip (pip.conf).
# pip's output goes to a log shown only on failure (it warns once per mirror and package).
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! "$venv/bin/pip" install --quiet --disable-pip-version-check \
  "ansible-core==$ANSIBLE_CORE_VERSION" "ansible-lint==$ANSIBLE_LINT_VERSION" >"$log" 2>&1; then
  cat "$log" >&2
  echo "scripts/ansible-venv.sh: pip install into $venv failed" >&2
  exit 1
fi
rm -f "$venv"/.installed-ansible-*
touch "$stamp"
echo "$venv/bin"
