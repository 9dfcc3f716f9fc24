"""check.yml and upgrade.yml against a running appliance: a lab site simulated on loopback.

The lab host gets its configuration from the role like any site (a simulated plant on free
127.0.0.1 ports); the test then starts the installed appliance with that configuration, as
the unit would, since there is no systemd here. `lab-down` is an appliance whose metrics
port has nothing behind it; `lab-late` is only there to show that a rollout stops before it.

What this cannot show without systemd: the restart of the service by the role's handler
(appliance_manage_service is false), so the upgraded appliance answering the health check
is the process the test started before the upgrade.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from appliance.health import check_health
from appliance.simulation.site_config import free_ports
from tests.ansible.fleet import REPO, Fleet, build_wheel, lab_host_vars
from tests.ansible.unit_file import unit_problems

pytestmark = pytest.mark.slow

HEALTHY_WITHIN_S = 60.0


@dataclass(frozen=True)
class Lab:
    fleet: Fleet
    inventory: Path
    metrics_port: int
    down_port: int

    def playbook(self, playbook: str, *args: str) -> tuple[int, str]:
        run = self.fleet.playbook(playbook, *args, inventory=[self.fleet.inventory, self.inventory])
        return run.returncode, run.output


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    report = None
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the appliance exited:\n{log.read_text()[-4000:]}"
        report = check_health(url, interval_s=1.0, timeout_s=2.0, expected_site="lab")
        if report.ok:
            return
        time.sleep(0.5)
    raise AssertionError(
        f"not healthy within {HEALTHY_WITHIN_S} s: {report}\n{log.read_text()[-4000:]}"
    )


@pytest.fixture(scope="module")
def lab(fleet: Fleet) -> Iterator[Lab]:
    ports = free_ports(8)
    down = lab_host_vars(ports[:7], site_id="lab-down")
    down["appliance_metrics_port"] = ports[7]  # nothing listens there
    hosts = {
        "lab": lab_host_vars(ports[:7]),
        "lab-down": down,
        "lab-late": lab_host_vars(ports[:7], site_id="lab-late"),
    }
    inventory = fleet.work / "lab-inventory.yml"
    inventory.write_text(yaml.safe_dump({"appliances": {"hosts": hosts}}))
    lab = Lab(fleet, inventory, ports[0], ports[7])

    code, output = lab.playbook("site.yml", "--limit", "lab")
    assert code == 0, output[-6000:]
    config = fleet.prefix("lab") / "etc" / "appliance" / "site.yaml"
    log = fleet.work / "lab-appliance.log"
    with log.open("wb") as sink:
        # What the unit's ExecStart= would run (the unit file is checked in the test below).
        process = subprocess.Popen(
            [str(fleet.venv / "bin" / "appliance"), "run", "--config", str(config), "--simulate"],
            cwd=fleet.prefix("lab") / "var" / "lib" / "appliance",
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_healthy(f"http://127.0.0.1:{lab.metrics_port}/metrics", process, log)
        yield lab
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _report_line(output: str, host: str) -> str:
    match = re.search(rf'"msg": "({re.escape(host)} \(site [^"]*)"', output)
    assert match is not None, output[-6000:]
    return match[1]


def test_lab_unit_runs_the_simulated_site_without_capabilities(lab: Lab) -> None:
    unit = (
        lab.fleet.prefix("lab") / "etc" / "systemd" / "system" / "appliance.service"
    ).read_text()
    assert unit_problems(unit) == []
    config = lab.fleet.prefix("lab") / "etc" / "appliance" / "site.yaml"
    assert f"ExecStart={lab.fleet.venv}/bin/appliance run --config {config} --simulate" in unit
    # Every face above port 1024: not even CAP_NET_BIND_SERVICE.
    assert "CapabilityBoundingSet=" in unit.splitlines()
    assert "AmbientCapabilities" not in unit
    assert not (config.parent / "influxdb.token").exists()


def test_check_reports_every_appliance_and_fails_for_an_unhealthy_one(lab: Lab) -> None:
    code, output = lab.playbook("check.yml", "--limit", "lab,lab-down")
    assert code != 0
    healthy = _report_line(output, "lab")
    assert healthy.startswith(
        f"lab (site lab): appliance {lab.fleet.version}, service not managed, config ok;"
    )
    assert "ok: site 'lab' running, alive counter" in healthy
    down = _report_line(output, "lab-down")
    assert f"problem: cannot read http://127.0.0.1:{lab.down_port}/metrics" in down
    assert "not healthy: lab-down" in output
    assert re.search(r"^lab\s+: ok=\d+\s+changed=0", output, re.MULTILINE), output[-3000:]


def test_check_passes_for_a_healthy_fleet_and_changes_nothing(lab: Lab) -> None:
    code, output = lab.playbook("check.yml", "--limit", "lab", "--check")
    assert code == 0, output[-6000:]
    assert "all 1 appliances healthy, on their pinned version, configuration ok" in output


def _wheel_with_version(work: Path, version: str) -> Path:
    """The appliance wheel as the next release: the same source with another version."""
    source = work / "next-release"
    if source.exists():
        shutil.rmtree(source)
    # models/ is a symbolic link inside the package: copy what it points to.
    shutil.copytree(
        REPO / "appliance", source / "appliance", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    init = source / "appliance" / "__init__.py"
    text, count = re.subn(r'__version__ = "[^"]+"', f'__version__ = "{version}"', init.read_text())
    assert count == 1
    init.write_text(text)
    return build_wheel(source, work / "dist")


def test_rolling_upgrade_stops_at_the_first_unhealthy_batch(lab: Lab) -> None:
    fleet = lab.fleet
    version = f"{fleet.version}+fleettest"
    wheel = _wheel_with_version(fleet.work, version)
    assert wheel.name == f"appliance-{version}-py3-none-any.whl"

    code, output = lab.playbook(
        "upgrade.yml",
        "--limit",
        "lab,lab-down,lab-late",
        "-e",
        f"appliance_version={version}",
        "-e",
        "appliance_upgrade_serial=1",
        "-e",
        "appliance_health_retries=2",
        "-e",
        "appliance_health_delay_s=1",
    )
    assert code != 0
    # Batch 1: lab upgraded and healthy through its own status.
    assert f"lab: appliance {fleet.version} -> appliance {version}, healthy" in output
    # Batch 2: lab-down upgraded, then its health check failed: the rollout stopped there.
    assert re.search(r"fatal: \[lab-down\].*Wait until|FAILED - RETRYING: \[lab-down\]", output), (
        output[-6000:]
    )
    assert "NO MORE HOSTS LEFT" in output
    # Batch 3 never started.
    assert "lab-late" not in output
    installed = subprocess.run(
        [str(fleet.venv / "bin" / "appliance"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert installed.stdout.strip() == f"appliance {version}"
