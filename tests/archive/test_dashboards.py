"""The Grafana dashboards: generated from the point table, structurally valid, and every
panel query answered with data by the real InfluxDB or Prometheus.

Grafana itself cannot run here, so what Grafana would do is done by hand: its template
variables and macros ($site, $node, $timeFilter, $__interval, $__rate_interval) are
substituted the way Grafana formats them, and the queries go to the servers the provisioned
data sources point at.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.archive import dashboards
from appliance.archive.grafana_model import GRID_WIDTH
from tests.archive.conftest import ArchivedSite, ScrapedSite, scrape_text
from tests.archive.servers import InfluxServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BOARDS = REPO / "grafana" / "dashboards"
PROVISIONING = REPO / "grafana" / "provisioning"
MACROS = {"$timeFilter", "$__interval", "$__rate_interval", "$tag_node"}
VARIABLE = re.compile(r"\$(\w+)")


def committed() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(BOARDS.glob("*.json"))}


def datasource_uids() -> dict[str, str]:
    provisioned = yaml.safe_load((PROVISIONING / "datasources" / "appliance.yaml").read_text())
    return {d["uid"]: d["type"] for d in provisioned["datasources"]}


def targets(board: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            yield panel, target


def test_the_committed_dashboards_are_what_the_point_table_generates() -> None:
    generated = dashboards.dashboards()
    assert sorted(generated) == sorted(committed())
    assert dashboards.main(["--check", "--out", str(BOARDS)]) == 0
    for name, board in generated.items():
        assert (BOARDS / name).read_text() == dashboards.render(board), name


def test_the_dashboard_provider_and_the_boards_agree() -> None:
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "appliance.yaml").read_text())
    [entry] = provider["providers"]
    assert entry["type"] == "file"
    assert entry["options"]["path"]
    boards = committed()
    assert len({b["uid"] for b in boards.values()}) == len(boards) == 4
    assert {b["title"] for b in boards.values()} == {
        "Appliance / Site overview",
        "Appliance / Battery cluster",
        "Appliance / Control quality",
        "Appliance / Health",
    }


@pytest.mark.parametrize("name", sorted(p.name for p in BOARDS.glob("*.json")))
def test_dashboard_is_structurally_valid(name: str) -> None:
    board = committed()[name]
    sources = datasource_uids()
    for key in ("uid", "title", "schemaVersion", "panels", "templating", "time"):
        assert key in board, key
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= GRID_WIDTH, panel["title"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert sources[panel["datasource"]["uid"]] == panel["datasource"]["type"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert ("query" in target) == (panel["datasource"]["type"] == "influxdb")
    variables = board["templating"]["list"]
    names = [v["name"] for v in variables]
    assert names == ["site", "node"], "templated by site and node"
    for index, variable in enumerate(variables):
        assert sources[variable["datasource"]["uid"]] == variable["datasource"]["type"]
        # A variable may only use the variables defined before it.
        used = set(VARIABLE.findall(variable["definition"]))
        assert used <= set(names[:index]), variable["name"]
    for panel, target in targets(board):
        text = target.get("query") or target["expr"]
        for used in VARIABLE.findall(f"{text} {target.get('alias', '')}"):
            assert used in names or f"${used}" in MACROS, f"{panel['title']}: ${used} is undefined"


# --------------------------------------------------------------------------- InfluxDB


def influx_text(text: str, site: ArchivedSite) -> str:
    start_ms, end_ms = int(site.start_s * 1000), int(site.end_s * 1000)
    return (
        text.replace("$timeFilter", f"time >= {start_ms}ms AND time <= {end_ms}ms")
        .replace("$__interval", "10s")
        .replace("$site", re.escape(site.config.site.id))
        .replace("$node", "(1|2)")  # "All" of a multi-value variable, as Grafana formats it
    )


def influx_boards() -> list[tuple[str, dict[str, Any]]]:
    return [
        (n, b)
        for n, b in committed().items()
        if b["templating"]["list"][0]["datasource"]["type"] == "influxdb"
    ]


def test_every_influxdb_panel_query_returns_data(
    archived_site: ArchivedSite, influxd: InfluxServer
) -> None:
    boards = influx_boards()
    assert len(boards) == 3
    ran = 0
    for name, board in boards:
        for panel, target in targets(board):
            series = influxd.series(influx_text(target["query"], archived_site), archived_site.db)
            values = [v for s in series for row in s["values"] for v in row[1:] if v is not None]
            assert values, f"{name}: {panel['title']}: no data for {target['query']}"
            if "GROUP BY" in target["query"] and '"node"' in target["query"]:
                assert {s["tags"]["node"] for s in series} == {"1", "2"}, panel["title"]
            ran += 1
    assert ran > 50


def test_influxdb_template_variables_resolve(
    archived_site: ArchivedSite, influxd: InfluxServer
) -> None:
    for name, board in influx_boards():
        answers = {}
        for variable in board["templating"]["list"]:
            series = influxd.series(influx_text(variable["query"], archived_site), archived_site.db)
            answers[variable["name"]] = sorted(row[1] for s in series for row in s["values"])
        assert answers == {"site": [archived_site.config.site.id], "node": ["1", "2"]}, name


# --------------------------------------------------------------------------- Prometheus


def prom_text(text: str, site: ScrapedSite) -> str:
    return (
        text.replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$site", site.context.config.site.id)
        .replace("$node", ".*")  # the variable's allValue
    )


def prometheus_board() -> dict[str, Any]:
    [board] = [
        b
        for b in committed().values()
        if b["templating"]["list"][0]["datasource"]["type"] == "prometheus"
    ]
    return board


def test_every_prometheus_panel_query_returns_data(scraped_site: ScrapedSite) -> None:
    ran = 0
    for panel, target in targets(prometheus_board()):
        result = scraped_site.prometheus.query(prom_text(target["expr"], scraped_site))
        assert result, f"{panel['title']}: no data for {target['expr']}"
        ran += 1
    assert ran > 20


def test_prometheus_template_variables_resolve(scraped_site: ScrapedSite) -> None:
    answers = {}
    for variable in prometheus_board()["templating"]["list"]:
        match = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["definition"])
        assert match is not None, variable["definition"]
        selector, label = prom_text(match.group(1), scraped_site), match.group(2)
        answers[variable["name"]] = sorted(
            scraped_site.prometheus.api(f"label/{label}/values", **{"match[]": selector})
        )
    assert answers == {"site": ["scraped"], "node": ["1", "2"]}


def test_every_metric_the_dashboards_and_alerts_use_is_in_the_scrape(
    scraped_site: ScrapedSite,
) -> None:
    assert scraped_site.face.port is not None
    exposed = {
        line.split("{")[0].split(" ")[0]
        for line in scrape_text(scraped_site.face.port).splitlines()
        if line and not line.startswith("#")
    }
    used = {
        m for _, t in targets(prometheus_board()) for m in re.findall(r"\bappliance_\w+", t["expr"])
    }
    rules = (REPO / "deploy" / "prometheus" / "rules" / "appliance.rules.yml").read_text()
    used |= set(re.findall(r"\bappliance_\w+", rules))
    assert len(used) > 20
    assert used <= exposed, f"not exposed: {sorted(used - exposed)}"
