#!/usr/bin/env bash
# The fleet provisioning checks (`make ansible-check`):
#   1. .venv-ansible with the pinned ansible-core and ansible-lint (scripts/ansible-venv.sh)
#   2. ansible-lint, production profile, offline
#   3. ansible-playbook --syntax-check of site.yml, upgrade.yml and check.yml
#   4. the playbook tests (tests/ansible): site.yml into a temporary root, idempotence,
#      --check --diff, bad inventory values, check.yml and a rolling upgrade (~2.5 min)
# Needs the appliance's test venv (.venv, `make` creates it) for step 4.
#
#   scripts/ansible-check.sh [--no-tests]
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON_VENV:-$repo/.venv/bin/python}
bin=$(bash "$repo/scripts/ansible-venv.sh" | tail -n 1)

export PATH="$bin:$PATH" ANSIBLE_NOCOLOR=1 NO_COLOR=1 ANSIBLE_CONFIG="$repo/ansible/ansible.cfg"
cd "$repo/ansible"

echo "== ansible-lint (production profile)"
ansible-lint --offline --profile production

echo "== ansible-playbook --syntax-check"
ansible-playbook -i inventories/example --syntax-check site.yml upgrade.yml check.yml

if [[ ${1:-} == --no-tests ]]; then
  exit 0
fi
echo "== playbook tests (tests/ansible)"
cd "$repo"
"$python" -m pytest -q tests/ansible
