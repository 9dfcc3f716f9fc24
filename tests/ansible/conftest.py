"""The fleet under test: the example inventory, run with connection local into a temporary root.

One session-scoped fixture builds the appliance wheel (`pip wheel . --no-deps`), copies the
example inventory, adds the vault files (encrypted with a throw-away password) and runs
site.yml once. A separate inventory file holds lab hosts (a simulated site on free loopback
ports, for a running appliance), used by test_fleet_lab.py only. Every path goes under a
temporary root per host (appliance_prefix); no system user is created, no
package installed, no service touched (appliance_manage_* false): the tasks that would do
so exist and are linted, but are switched off here.

The appliance hosts share one virtual environment (appliance_venv_dir): installing the
appliance and its ~50 dependencies is most of a first run, and doing it once instead of
once per host keeps the suite within its time budget. The first run uses one fork so that
two hosts never install into it at the same time; the role installs once and finds the
pinned version in place for the other hosts.

Ansible comes from .venv-ansible, made by scripts/ansible-venv.sh when missing.
"""

from __future__ import annotations

import getpass
import grp
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

import appliance
from tests.ansible.fleet import (
    EXAMPLE_INVENTORY,
    GRAFANA_TOKEN,
    INFLUX_TOKEN,
    REPO,
    Fleet,
    Run,
    ansible_bin,
    base_python,
    build_wheel,
)


def _write_vault(
    fleet_bin: Path, path: Path, content: str, password: Path, env: dict[str, str]
) -> None:
    path.write_text(content)
    subprocess.run(
        [
            str(fleet_bin / "ansible-vault"),
            "encrypt",
            "--vault-password-file",
            str(password),
            str(path),
        ],
        check=True,
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert path.read_text().startswith("$ANSIBLE_VAULT;")


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    work = tmp_path_factory.mktemp("fleet")
    bin_dir = ansible_bin()
    dist = work / "dist"
    build_wheel(REPO, dist)

    inventory = work / "inventory"
    shutil.copytree(EXAMPLE_INVENTORY, inventory)

    root = work / "root"
    promtool = shutil.which("promtool")
    user, group = getpass.getuser(), grp.getgrgid(os.getgid()).gr_name
    python = base_python()
    overrides = {
        "ansible_connection": "local",
        "ansible_python_interpreter": python,
        "ansible_become": False,
        "appliance_python": python,
        "appliance_prefix": f"{root}/{{{{ inventory_hostname }}}}",
        "monitoring_prefix": f"{root}/{{{{ inventory_hostname }}}}",
        "appliance_wheel_dir": str(dist),
        "appliance_venv_dir": str(work / "venv"),
        # The user-creation tasks exist (and are linted); here everything runs as the caller.
        "appliance_manage_user": False,
        "appliance_user": user,
        "appliance_group": group,
        "appliance_config_owner": user,
        "appliance_manage_packages": False,
        "appliance_manage_service": False,
        "monitoring_manage_packages": False,
        "monitoring_manage_service": False,
        "monitoring_config_owner": user,
        "monitoring_grafana_group": group,
        "monitoring_validate": promtool is not None,
        "monitoring_promtool": promtool or "/usr/bin/promtool",
    }
    overrides_file = work / "overrides.yml"
    overrides_file.write_text(yaml.safe_dump(overrides))

    password = work / "vault-password"
    password.write_text("throw-away-test-vault-password\n")
    password.chmod(0o600)
    partial = Fleet(
        bin_dir,
        work,
        root,
        inventory,
        overrides_file,
        password,
        dist,
        appliance.__version__,
        Run([], 0, ""),
    )
    _write_vault(
        bin_dir,
        inventory / "group_vars" / "appliances" / "vault.yml",
        f"vault_appliance_influxdb_token: {INFLUX_TOKEN}\n",
        password,
        partial.env(),
    )
    _write_vault(
        bin_dir,
        inventory / "group_vars" / "monitoring" / "vault.yml",
        f"vault_monitoring_grafana_influxdb_token: {GRAFANA_TOKEN}\n",
        password,
        partial.env(),
    )
    first = partial.playbook("site.yml", "--forks", "1")
    assert first.returncode == 0, first.explain()
    return Fleet(
        bin_dir, work, root, inventory, overrides_file, password, dist, appliance.__version__, first
    )
