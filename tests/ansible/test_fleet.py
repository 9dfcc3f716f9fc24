"""The playbooks against this machine: lint, syntax, site.yml into a temporary root, idempotence,
--check --diff, a bad inventory value, and the rendered files.

The fleet fixture (conftest.py) has run site.yml once for the example inventory's two sites
(one battery; a cluster of 4 nodes) and the monitoring host, each into its own prefix under
a temporary root, with connection local and service management off.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from appliance.config import load_config
from appliance.northbound.metrics import PointCollector
from appliance.runtime.site_table import site_point_table
from tests.ansible.fleet import (
    APPLIANCE_HOSTS,
    GRAFANA_TOKEN,
    INFLUX_TOKEN,
    MONITOR_HOST,
    REPO,
    Fleet,
)
from tests.ansible.unit_file import unit_problems

pytestmark = pytest.mark.slow

PLAYBOOKS = ("site.yml", "upgrade.yml", "check.yml")


def snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every file and link under `root` (virtual environments aside): content hash, mode, mtime."""
    found: dict[str, tuple[str, int, int]] = {}
    for path in sorted(root.rglob("*")):
        if "venv" in path.relative_to(root).parts:
            continue
        info = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        found[str(path.relative_to(root))] = (digest, info.st_mode, info.st_mtime_ns)
    return found


def appliance_cli(fleet: Fleet, host: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The appliance command as the role installed it for `host`."""
    link = fleet.prefix(host) / "usr" / "local" / "bin" / "appliance"
    assert link.resolve() == fleet.venv / "bin" / "appliance"
    return subprocess.run(
        [str(link), *args], capture_output=True, text=True, timeout=60, check=False
    )


# --------------------------------------------------------------------------- static checks


def test_ansible_lint_passes_the_production_profile(fleet: Fleet) -> None:
    result = fleet.run(str(fleet.bin / "ansible-lint"), "--offline", "--profile", "production")
    assert result.returncode == 0, result.explain()
    assert "Profile 'production' was required, and it passed" in result.output


def test_syntax_check(fleet: Fleet) -> None:
    result = fleet.run(
        str(fleet.bin / "ansible-playbook"),
        "-i",
        str(fleet.inventory),
        "--syntax-check",
        *PLAYBOOKS,
    )
    assert result.returncode == 0, result.explain()
    for playbook in PLAYBOOKS:
        assert f"playbook: {playbook}" in result.output


# --------------------------------------------------------------------------- the first run


def test_first_run_installed_every_host(fleet: Fleet) -> None:
    recap = fleet.first_run.recap()
    assert set(recap) == {*APPLIANCE_HOSTS, MONITOR_HOST}
    for host, counts in recap.items():
        assert counts["failed"] == 0, host
        assert counts["unreachable"] == 0, host
        assert counts["changed"] > 0, host


@pytest.mark.parametrize("host", APPLIANCE_HOSTS)
def test_installed_version_is_the_pinned_one(fleet: Fleet, host: str) -> None:
    result = appliance_cli(fleet, host, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"appliance {fleet.version}"
    wheel = (
        fleet.prefix(host)
        / "opt"
        / "appliance"
        / "wheels"
        / f"appliance-{fleet.version}-py3-none-any.whl"
    )
    assert wheel.is_file()


@pytest.mark.parametrize("host", APPLIANCE_HOSTS)
def test_rendered_config_passes_check_config(fleet: Fleet, host: str) -> None:
    site_file = fleet.prefix(host) / "etc" / "appliance" / "site.yaml"
    result = appliance_cli(fleet, host, "check-config", str(site_file))
    assert result.returncode == 0, result.stderr
    assert f"site '{host}'" in result.stdout
    assert stat.S_IMODE(site_file.stat().st_mode) == 0o640


def test_config_carries_the_inventory(fleet: Fleet) -> None:
    hof = load_config(fleet.prefix("hof-meier") / "etc" / "appliance" / "site.yaml")
    cluster = load_config(fleet.prefix("cluster-nord") / "etc" / "appliance" / "site.yaml")
    assert len(hof.devices.battery_nodes) == 1
    assert len(cluster.devices.battery_nodes) == 4
    # A node's own limits win over the group's; the rest comes from the group.
    assert hof.devices.battery_nodes[0].limits.max_charge_w == 3000
    assert hof.devices.battery_nodes[0].limits.max_soc_pct == 95
    assert [n.limits.max_soc_pct for n in cluster.devices.battery_nodes] == [95, 95, 95, 90]
    assert cluster.control.site_max_charge_w == 17000
    assert [u.name for u in hof.users] == ["scada", "operator", "admin"]
    assert hof.faces.metrics.port == 9464
    assert hof.faces.metrics.bind == "0.0.0.0"
    assert str(hof.data_dir) == str(fleet.prefix("hof-meier") / "var" / "lib" / "appliance")


@pytest.mark.parametrize("host", ["hof-meier", "cluster-nord"])
def test_influxdb_token_is_in_a_0600_file_only(fleet: Fleet, host: str) -> None:
    config_dir = fleet.prefix(host) / "etc" / "appliance"
    token = config_dir / "influxdb.token"
    assert token.read_text().strip() == INFLUX_TOKEN
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    site = (config_dir / "site.yaml").read_text()
    assert INFLUX_TOKEN not in site
    assert f"token_file: {token}" in site
    assert stat.S_IMODE(config_dir.stat().st_mode) == 0o750
    assert INFLUX_TOKEN not in fleet.first_run.output
    assert GRAFANA_TOKEN not in fleet.first_run.output


@pytest.mark.parametrize("host", APPLIANCE_HOSTS)
def test_unit_file_is_valid_and_hardened(fleet: Fleet, host: str) -> None:
    prefix = fleet.prefix(host)
    unit = prefix / "etc" / "systemd" / "system" / "appliance.service"
    text = unit.read_text()
    assert unit_problems(text) == []
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:  # the real check where systemd is installed; ours above always
        result = subprocess.run(
            [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stderr
    venv = fleet.venv
    config = prefix / "etc" / "appliance" / "site.yaml"
    for line in (
        "Type=simple",
        f"ExecStart={venv}/bin/appliance run --config {config}",
        f"ExecStartPre={venv}/bin/appliance check-config {config}",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={prefix}/var/lib/appliance {prefix}/var/log/appliance",
        "SupplementaryGroups=dialout",
        # The Modbus slave's port 502 needs this one capability (and gets no other).
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
    ):
        assert line in text.splitlines(), line


def test_can_interfaces_are_set_up_the_way_each_site_asks(fleet: Fleet) -> None:
    hof = fleet.prefix("hof-meier") / "etc" / "systemd"
    can_unit = hof / "system" / "appliance-can-can0.service"
    text = can_unit.read_text()
    assert unit_problems(text) == []
    assert "ExecStart=/usr/sbin/ip link set can0 type can bitrate 500000 restart-ms 100" in text
    assert "appliance-can-can0.service" in (hof / "system" / "appliance.service").read_text()
    cluster = fleet.prefix("cluster-nord") / "etc" / "systemd"
    networks = sorted(p.name for p in (cluster / "network").glob("*.network"))
    assert networks == [f"80-appliance-can{i}.network" for i in range(4)]
    assert "BitRate=500000" in (cluster / "network" / "80-appliance-can3.network").read_text()
    assert not list((cluster / "system").glob("appliance-can-*"))


# --------------------------------------------------------------------------- monitoring


def test_scrape_targets_come_from_the_inventory(fleet: Fleet) -> None:
    targets = yaml.safe_load(
        (
            fleet.prefix(MONITOR_HOST) / "etc" / "prometheus" / "targets" / "appliances.yml"
        ).read_text()
    )
    by_host = {t["labels"]["appliance"]: t for t in targets}
    assert set(by_host) == set(APPLIANCE_HOSTS)
    assert by_host["hof-meier"]["targets"] == ["192.0.2.11:9464"]
    assert by_host["cluster-nord"]["labels"]["site"] == "cluster-nord"


def test_prometheus_config_and_rules_are_valid(fleet: Fleet) -> None:
    prometheus = fleet.prefix(MONITOR_HOST) / "etc" / "prometheus"
    config = yaml.safe_load((prometheus / "prometheus.yml").read_text())
    rules = yaml.safe_load((prometheus / "rules" / "appliance.rules.yml").read_text())
    assert config["rule_files"] == [str(prometheus / "rules" / "appliance.rules.yml")]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["appliance"]["file_sd_configs"][0]["files"] == [
        str(prometheus / "targets" / "appliances.yml")
    ]
    missing = [r for g in rules["groups"] for r in g["rules"] if r["alert"] == "ApplianceMissing"]
    assert sorted(r["labels"]["site"] for r in missing) == sorted(APPLIANCE_HOSTS)
    promtool = shutil.which("promtool")
    if promtool is not None:  # also checked by the role's validate: before installing
        for args in (
            ["check", "config", "prometheus.yml"],
            ["check", "rules", "rules/appliance.rules.yml"],
        ):
            result = subprocess.run(
                [promtool, *args],
                cwd=prometheus,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 0, result.stdout + result.stderr


def _exported_metric_names() -> set[str]:
    """Every metric family the metrics face exposes for a site (counters with _total)."""
    config = load_config(REPO / "models" / "sites" / "example-site.yaml")
    registry = CollectorRegistry(auto_describe=True)
    registry.register(PointCollector(site_point_table(config), {}, config.site.id))
    names = set()
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            # Some exposition versions name a counter's family with _total, some without.
            names.add(name if kind != "counter" or name.endswith("_total") else f"{name}_total")
    return names


def test_alert_rules_use_metric_names_the_appliance_exports(fleet: Fleet) -> None:
    rules = yaml.safe_load(
        (
            fleet.prefix(MONITOR_HOST) / "etc" / "prometheus" / "rules" / "appliance.rules.yml"
        ).read_text()
    )
    exported = _exported_metric_names()
    used = set()
    for group in rules["groups"]:
        for rule in group["rules"]:
            used |= {
                word
                for word in rule["expr"].replace("(", " ").replace("{", " ").split()
                if word.startswith("appliance_")
            }
    assert used, "the rules name no appliance metric"
    assert used <= exported, f"not exported: {sorted(used - exported)}"


def test_grafana_is_provisioned_with_the_repository_dashboards(fleet: Fleet) -> None:
    monitor = fleet.prefix(MONITOR_HOST)
    provisioning = monitor / "etc" / "grafana" / "provisioning"
    datasources = provisioning / "datasources" / "appliance.yml"
    sources = yaml.safe_load(datasources.read_text())["datasources"]
    assert [s["uid"] for s in sources] == ["appliance-prometheus", "appliance-influxdb"]
    assert sources[1]["secureJsonData"]["token"] == GRAFANA_TOKEN
    assert stat.S_IMODE(datasources.stat().st_mode) == 0o640
    provider = yaml.safe_load((provisioning / "dashboards" / "appliance.yml").read_text())
    dashboards_dir = Path(provider["providers"][0]["options"]["path"])
    assert dashboards_dir == monitor / "var" / "lib" / "grafana" / "dashboards" / "appliance"
    # Whatever the repository's grafana/ holds today is what got copied.
    in_repo = sorted(p.name for p in (REPO / "grafana").rglob("*.json"))
    assert sorted(p.name for p in dashboards_dir.iterdir()) == in_repo


# --------------------------------------------------------------------------- runs after the first


def test_second_run_changes_nothing(fleet: Fleet) -> None:
    before = snapshot(fleet.root)
    result = fleet.playbook("site.yml")
    assert result.returncode == 0, result.explain()
    recap = result.recap()
    assert set(recap) == {*APPLIANCE_HOSTS, MONITOR_HOST}
    assert {host: counts["changed"] for host, counts in recap.items()} == dict.fromkeys(recap, 0)
    assert snapshot(fleet.root) == before


def _edit_host_vars(fleet: Fleet, host: str, old: str, new: str) -> str:
    path = fleet.inventory / "host_vars" / f"{host}.yml"
    original = path.read_text()
    assert original.count(old) == 1, old
    path.write_text(original.replace(old, new))
    return original


def test_check_diff_shows_exactly_the_inventory_change(fleet: Fleet) -> None:
    host_vars = fleet.inventory / "host_vars" / "hof-meier.yml"
    original = _edit_host_vars(fleet, "hof-meier", "max_charge_w: 3000", "max_charge_w: 2500")
    before = snapshot(fleet.root)
    try:
        result = fleet.playbook("site.yml", "--check", "--diff", "--limit", "hof-meier")
    finally:
        host_vars.write_text(original)
    assert result.returncode == 0, result.explain()
    recap = result.recap()
    assert set(recap) == {"hof-meier"}
    assert recap["hof-meier"]["changed"] == 1  # the site configuration, nothing else
    changed_lines = [
        line
        for line in result.output.splitlines()
        if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))
    ]
    assert changed_lines == ["-      max_charge_w: 3000", "+      max_charge_w: 2500"]
    site_file = fleet.prefix("hof-meier") / "etc" / "appliance" / "site.yaml"
    assert f"--- before: {site_file}" in result.output
    assert snapshot(fleet.root) == before  # --check changed nothing on disk
    assert INFLUX_TOKEN not in result.output


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        # A range: tasks/validate.yml names the variable, the node and the allowed range.
        (
            "max_charge_w: 3000",
            "max_charge_w: -5",
            "appliance_battery_nodes[0] (node1).limits.max_charge_w is -5; allowed: a number in 0 .. 1000000",
        ),
        # A typo in a key: the argument spec refuses it before the first task.
        (
            "max_charge_w: 3000",
            "max_charge_W: 3000",
            "appliance_battery_nodes.limits.max_charge_W. Supported parameters include",
        ),
        # A value outside the choices.
        ("kind: sunspec", "kind: sunspek", "appliance_battery_nodes -> inverter"),
    ],
    ids=["negative-limit", "unknown-key", "bad-choice"],
)
def test_bad_inventory_value_fails_before_anything_changes(
    fleet: Fleet, old: str, new: str, message: str
) -> None:
    host_vars = fleet.inventory / "host_vars" / "hof-meier.yml"
    original = _edit_host_vars(fleet, "hof-meier", old, new)
    before = snapshot(fleet.root)
    try:
        result = fleet.playbook("site.yml")
    finally:
        host_vars.write_text(original)
    assert result.returncode != 0
    assert message in result.output, result.explain()
    # The checking play stops every host: none reaches the play that changes things.
    assert "PLAY [Install and configure the appliances]" not in result.output
    assert all(c["changed"] == 0 for c in result.recap().values())
    assert snapshot(fleet.root) == before
