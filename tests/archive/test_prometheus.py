"""The metrics face scraped by a real Prometheus, and promtool on the metrics and the rules."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.archive.conftest import RULES, ScrapedSite, scrape_text

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "prometheus"


def promtool(*args: str, stdin: str | None = None, cwd: Path | None = None) -> str:
    result = subprocess.run(
        ["promtool", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=cwd,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def value(site: ScrapedSite, expr: str) -> float:
    [sample] = site.prometheus.query(expr)
    return float(sample["value"][1])


def test_prometheus_scrapes_the_metrics_face_with_base_units(scraped_site: ScrapedSite) -> None:
    mirror = scraped_site.context.mirror
    grid = mirror["grid.active_power"].value
    assert grid is not None
    assert value(scraped_site, 'appliance_grid_active_power_watts{site="scraped"}') == grid
    soc = mirror["battery.2.soc"].value
    assert soc is not None
    assert value(scraped_site, 'appliance_battery_soc_ratio{node="2"}') == pytest.approx(soc / 100)
    lateness = mirror["appliance.loop_lateness"].value
    assert lateness is not None
    assert value(scraped_site, "appliance_appliance_loop_lateness_seconds") == pytest.approx(
        lateness / 1000
    )
    energy = mirror["grid.import_energy"].value
    assert energy is not None
    assert value(scraped_site, "appliance_grid_import_energy_joules_total") == pytest.approx(
        energy * 3.6e6
    )
    mode = mirror["controller.mode"].value
    states = scraped_site.context.table["controller.mode"].states
    current = scraped_site.prometheus.query("appliance_controller_mode == 1")
    assert [s["metric"]["state"] for s in current] == [states[int(mode or 0)]]
    assert len(scraped_site.prometheus.query("appliance_controller_mode")) == len(states)


def test_device_health_commands_and_archive_reach_prometheus(scraped_site: ScrapedSite) -> None:
    devices = scraped_site.prometheus.query("appliance_device_up")
    assert sorted(d["metric"]["device"] for d in devices) == [
        "battery.1",
        "battery.2",
        "consumption_clamp",
        "grid",
        "inverter.1",
        "inverter.2",
        "pv",
        "sml_meter",
    ]
    assert all(d["value"][1] == "1" for d in devices)
    commands = scraped_site.prometheus.query("appliance_commands_total")
    assert sorted(
        (c["metric"]["source"], c["metric"]["command"], c["metric"]["result"]) for c in commands
    ) == [("modbus", "heartbeat", "accepted"), ("opcua", "set_mode", "accepted")]
    assert value(scraped_site, "appliance_archive_spool_points") == 40
    assert value(scraped_site, 'appliance_face_up{face="metrics"}') == 1


def test_the_alert_rules_load_into_prometheus(scraped_site: ScrapedSite) -> None:
    groups = scraped_site.prometheus.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert len(rules) == 8
    assert all(r["health"] == "ok" for r in rules), [r.get("lastError") for r in rules]


def test_promtool_lints_the_scrape_without_a_problem(scraped_site: ScrapedSite) -> None:
    assert scraped_site.face.port is not None
    text = scrape_text(scraped_site.face.port)
    assert "appliance_archive_points_dropped_total" in text
    promtool("check", "metrics", stdin=text)


def test_promtool_checks_the_rules_the_config_and_the_rule_unit_tests() -> None:
    assert "SUCCESS: 8 rules found" in promtool("check", "rules", str(RULES))
    promtool("check", "config", str(DEPLOY / "prometheus.yml"))
    out = promtool("test", "rules", "appliance.rules.test.yml", cwd=RULES.parent)
    assert "SUCCESS" in out
