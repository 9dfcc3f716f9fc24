"""The Grafana dashboards of the appliance, generated from the point table.

    python -m appliance.archive.dashboards            # writes grafana/dashboards/*.json
    python -m appliance.archive.dashboards --check    # exit 1 if the committed JSON differs

Four boards, each templated by site (and node where there are nodes):
* site overview (InfluxDB archive): grid, PV, house and battery power, SoC, mode timeline;
* battery cluster (InfluxDB archive): per node SoC, power, cell voltages, temperatures,
  limits, balancing;
* control quality (InfluxDB archive): deviation from the grid target, setpoint against
  measured power, controller terms, failsafe events;
* appliance health (Prometheus): loop timing, devices, heartbeat, faces, commands, spool.

Measurements, fields, metric names, units and state names all come from models/points.yaml
through `ArchiveSpec` and `metrics.metric_name`, so the boards follow the table.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appliance.archive.grafana_model import (
    INFLUX,
    POINT_UNITS,
    PROMETHEUS,
    Board,
    Target,
    query_variable,
    value_mappings,
)
from appliance.archive.plan import STATUS_MEASUREMENT
from appliance.northbound.metrics import PREFIX, metric_name
from appliance.points.model import Point
from appliance.points.table import PointTable, shipped_point_table

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "grafana" / "dashboards"

SITE_FILTER = '"site" =~ /^$site$/'
NODE_FILTER = '"node" =~ /^$node$/'
PROM_SITE = 'site=~"$site"'
TIMELINE = {"showValue": "auto", "mergeValues": True, "rowHeight": 0.9}


class Points:
    """Point lookups for the boards; templated points by their node-1 instance."""

    def __init__(self, table: PointTable) -> None:
        self.table = table

    def __getitem__(self, point_id: str) -> Point:
        return self.table[point_id.replace("{n}", "1")]


# --------------------------------------------------------------------------- InfluxQL


def influxql(*parts: str) -> str:
    """Words of an InfluxQL statement; names in it come from the point table, not from users."""
    return " ".join(parts)


def influx_query(point: Point, agg: str = "mean", *, fill: str = "null") -> str:
    """One field of one point over time; templated points one series per node."""
    spec = point.archive
    if spec is None:
        raise ValueError(f"{point.id} is not archived; a board cannot show its history")
    where = [SITE_FILTER]
    group = ["time($__interval)"]
    if point.node is not None:
        where.append(NODE_FILTER)
        group.append('"node"')
    return influxql(
        "SELECT",
        f'{agg}("{spec.field}")',
        "FROM",
        f'"{spec.measurement}"',
        "WHERE",
        " AND ".join([*where, "$timeFilter"]),
        "GROUP BY",
        ", ".join(group),
        f"fill({fill})",
    )


def influx_total(point: Point, agg: str) -> str:
    """One number over the whole time range (last value, energy in range, ...)."""
    spec = point.archive
    if spec is None:
        raise ValueError(f"{point.id} is not archived")
    return influxql(
        "SELECT",
        f'{agg}("{spec.field}")',
        "FROM",
        f'"{spec.measurement}"',
        "WHERE",
        SITE_FILTER,
        "AND $timeFilter",
    )


def iq(point: Point, agg: str = "mean", *, legend: str | None = None, fill: str = "null") -> Target:
    name = legend if legend is not None else point.label
    if point.node is not None:
        name = f"{name} node $tag_node"
    return Target(INFLUX, influx_query(point, agg, fill=fill), name)


def state_iq(point: Point, legend: str | None = None) -> Target:
    return iq(point, "last", legend=legend, fill="previous")


def unit_of(point: Point) -> str | None:
    return POINT_UNITS.get(point.unit)


def influx_variables() -> list[dict[str, Any]]:
    return [
        query_variable("site", "Site", INFLUX, 'SHOW TAG VALUES FROM "cluster" WITH KEY = "site"'),
        query_variable(
            "node",
            "Node",
            INFLUX,
            f'SHOW TAG VALUES FROM "battery" WITH KEY = "node" WHERE {SITE_FILTER}',
            multi=True,
        ),
    ]


# --------------------------------------------------------------------------- PromQL


def selector(point: Point) -> str:
    labels = [PROM_SITE] + (['node=~"$node"'] if point.node is not None else [])
    return f"{metric_name(point)}{{{', '.join(labels)}}}"


def pq(expr: str, legend: str = "") -> Target:
    return Target(PROMETHEUS, expr, legend)


def prometheus_variables() -> list[dict[str, Any]]:
    return [
        query_variable(
            "site", "Site", PROMETHEUS, f"label_values({PREFIX}_appliance_cycles_total, site)"
        ),
        query_variable(
            "node",
            "Node",
            PROMETHEUS,
            f"label_values({PREFIX}_device_up{{{PROM_SITE}}}, node)",
            multi=True,
            all_value=".*",
        ),
    ]


# --------------------------------------------------------------------------- the boards


def site_overview(p: Points) -> Board:
    board = Board(
        "appliance-site-overview",
        "Appliance / Site overview",
        "Power flows, state of charge and operating mode of one site, from the archive.",
        influx_variables(),
    )
    powers = [p["grid.active_power"], p["pv.active_power"], p["house.active_power"]]
    powers.append(p["cluster.active_power"])
    board.row("Now")
    for point in [*powers, p["cluster.soc"]]:
        board.panel(
            "stat",
            point.label,
            [Target(INFLUX, influx_total(point, "last"))],
            unit=unit_of(point),
            width=4,
            height=4,
            description=point.description,
            options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"},
        )
    mode = p["controller.mode"]
    board.panel(
        "stat",
        mode.label,
        [Target(INFLUX, influx_total(mode, "last"))],
        width=4,
        height=4,
        mappings=value_mappings(mode.states),
        description=mode.description,
        options={"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"},
    )
    board.row("Power and energy")
    board.panel(
        "timeseries",
        "Power flows",
        [iq(point) for point in powers],
        unit="watt",
        width=24,
        description="Grid > 0 import, battery > 0 discharge, PV >= 0, house = consumption.",
    )
    energy = [p["grid.import_energy"], p["grid.export_energy"], p["pv.energy"]]
    board.panel(
        "stat",
        "Energy in the time range",
        [Target(INFLUX, influx_total(point, "spread"), point.label) for point in energy],
        unit="kwatth",
        width=8,
        description="Difference of the meters' energy registers over the selected time range.",
        options={"reduceOptions": {"calcs": ["lastNotNull"]}, "textMode": "value_and_name"},
    )
    soc = [iq(p["cluster.soc"]), iq(p["battery.{n}.soc"], legend="SoC")]
    board.panel("timeseries", "State of charge", soc, unit="percent", width=16)
    board.row("Mode")
    state = p["controller.state"]
    board.panel(
        "state-timeline",
        "Operating mode and state",
        [state_iq(mode), state_iq(state)],
        width=24,
        height=6,
        mappings=value_mappings({**mode.states, **state.states}),
        description="Mode requested by the last command; state including the overrides.",
        options=TIMELINE,
    )
    status = [
        Target(
            INFLUX,
            influxql(
                "SELECT",
                f'mean("{name}")',
                "FROM",
                f'"{STATUS_MEASUREMENT}"',
                "WHERE",
                SITE_FILTER,
                "AND $timeFilter GROUP BY time($__interval) fill(null)",
            ),
            label,
        )
        for name, label in (("active_power", "Cluster power"), ("soc", "SoC"))
    ]
    board.panel(
        "timeseries",
        "Cluster status record (fleet telemetry)",
        status,
        width=24,
        height=6,
        description=f"The periodic `{STATUS_MEASUREMENT}` record that central InfluxDBs collect.",
    )
    return board


def battery_cluster(p: Points) -> Board:
    board = Board(
        "appliance-battery-cluster",
        "Appliance / Battery cluster",
        "Per battery node: state of charge, power, cell voltages, temperatures, limits, balancing.",
        influx_variables(),
    )
    board.row("Charge and power")
    board.panel(
        "timeseries", "State of charge", [iq(p["battery.{n}.soc"], legend="SoC")], unit="percent"
    )
    board.panel(
        "timeseries",
        "Power per node",
        [iq(p["battery.{n}.power"], legend="DC"), iq(p["inverter.{n}.active_power"], legend="AC")],
        unit="watt",
        description="Pack DC power and the inverter's AC power; > 0 discharge.",
    )
    board.panel(
        "timeseries",
        "Pack voltage and current",
        [iq(p["battery.{n}.voltage"], legend="V"), iq(p["battery.{n}.current"], legend="A")],
        width=12,
    )
    board.panel(
        "timeseries", "State of health", [iq(p["battery.{n}.soh"], legend="SoH")], unit="percent"
    )
    board.row("Cells")
    board.panel(
        "timeseries",
        "Cell voltage min / max",
        [
            iq(p["battery.{n}.cell_voltage_min"], "min", legend="min"),
            iq(p["battery.{n}.cell_voltage_max"], "max", legend="max"),
        ],
        unit="volt",
    )
    board.panel(
        "timeseries",
        "Temperature min / max",
        [
            iq(p["battery.{n}.temperature_min"], "min", legend="min"),
            iq(p["battery.{n}.temperature_max"], "max", legend="max"),
        ],
        unit="celsius",
    )
    board.row("Limits")
    board.panel(
        "timeseries",
        "BMS current limits",
        [
            iq(p["battery.{n}.charge_current_limit"], legend="charge"),
            iq(p["battery.{n}.discharge_current_limit"], legend="discharge"),
        ],
        unit="amp",
    )
    board.panel(
        "timeseries",
        "Inverter power limits",
        [
            iq(p["inverter.{n}.max_charge_power"], legend="charge"),
            iq(p["inverter.{n}.max_discharge_power"], legend="discharge"),
        ],
        unit="watt",
    )
    board.panel(
        "timeseries",
        "Cluster limits",
        [iq(p["cluster.charge_limit"]), iq(p["cluster.discharge_limit"])],
        unit="watt",
    )
    board.panel(
        "timeseries",
        "Charge voltage limit",
        [iq(p["battery.{n}.charge_voltage_limit"], legend="V")],
        unit="volt",
    )
    board.row("Balancing and state")
    board.panel(
        "timeseries",
        "SoC spread",
        [iq(p["cluster.soc_min"]), iq(p["cluster.soc_max"])],
        unit="percent",
        description="Balancing starts above 5 % spread and stops below 2 %.",
    )
    balancing = p["cluster.balancing"]
    board.panel(
        "state-timeline",
        "Balancing and nodes online",
        [state_iq(balancing), state_iq(p["cluster.nodes_online"])],
        mappings=value_mappings({0: "off", 1: "on"}),
        options=TIMELINE,
    )
    board.panel(
        "state-timeline",
        "BMS flags and communication",
        [
            state_iq(p["battery.{n}.alarm_flags"], legend="alarms"),
            state_iq(p["battery.{n}.warning_flags"], legend="warnings"),
            state_iq(p["battery.{n}.comm_ok"], legend="comm"),
        ],
        width=24,
        options=TIMELINE,
    )
    return board


def control_quality(p: Points) -> Board:
    board = Board(
        "appliance-control-quality",
        "Appliance / Control quality",
        "How well the controller holds the grid target, and when failsafes acted.",
        influx_variables(),
    )
    error = p["controller.error"]
    board.row("Grid target")
    board.panel(
        "timeseries",
        "Grid power against target",
        [iq(p["grid.active_power"]), iq(p["controller.grid_target"])],
        unit="watt",
        width=16,
    )
    spec = error.archive
    if spec is None:
        raise ValueError("controller.error must be archived for the control quality board")
    board.panel(
        "stat",
        "Mean absolute deviation",
        [
            Target(
                INFLUX,
                influxql(
                    'SELECT mean("deviation") FROM (SELECT',
                    f'abs("{spec.field}") AS "deviation"',
                    "FROM",
                    f'"{spec.measurement}"',
                    "WHERE",
                    SITE_FILTER,
                    "AND $timeFilter)",
                ),
            )
        ],
        unit="watt",
        width=8,
        description="Mean of |grid power - grid target| over the time range.",
        options={"reduceOptions": {"calcs": ["lastNotNull"]}},
    )
    board.panel(
        "timeseries",
        "Deviation from target",
        [iq(error)],
        unit="watt",
        width=24,
        description=error.description,
    )
    board.row("Setpoints")
    board.panel(
        "timeseries",
        "Cluster setpoint against measured power",
        [iq(p["cluster.setpoint"]), iq(p["cluster.active_power"])],
        unit="watt",
    )
    board.panel(
        "timeseries",
        "Inverter setpoint against measured power",
        [
            iq(p["inverter.{n}.setpoint"], legend="setpoint"),
            iq(p["inverter.{n}.active_power"], legend="measured"),
        ],
        unit="watt",
    )
    board.panel(
        "timeseries",
        "Controller terms",
        [iq(p[f"controller.{name}"]) for name in ("p_term", "i_term", "d_term", "output")],
        unit="watt",
    )
    board.panel(
        "state-timeline",
        "Output saturated",
        [state_iq(p["controller.saturated"])],
        mappings=value_mappings({0: "no", 1: "saturated"}),
        options=TIMELINE,
    )
    board.row("Failsafes")
    alarms = [
        p[f"alarms.{name}"]
        for name in ("meter_lost", "battery_floor", "off_grid", "heartbeat_lost")
    ]
    board.panel(
        "state-timeline",
        "Failsafe events",
        [state_iq(point) for point in alarms] + [state_iq(p["heartbeat.ok"])],
        width=24,
        mappings=value_mappings({0: "off", 1: "active"}),
        description="Sensor loss ramp-down, safety floor recharge, off-grid and heartbeat fallback.",
        options=TIMELINE,
    )
    state = p["controller.state"]
    board.panel(
        "state-timeline",
        "Controller state (overrides)",
        [state_iq(state)],
        mappings=value_mappings(state.states),
        options=TIMELINE,
    )
    board.panel("timeseries", "Active alarms", [iq(p["alarms.count"], "max")])
    return board


def appliance_health(p: Points) -> Board:
    board = Board(
        "appliance-health",
        "Appliance / Health",
        "The appliance itself: control loop timing, devices, heartbeat, faces and the archive spool.",
        prometheus_variables(),
    )
    s = PROM_SITE
    lateness = p["appliance.loop_lateness"]
    overruns = p["appliance.loop_overruns"]
    board.row("Control loop")
    board.panel(
        "timeseries",
        "Loop lateness",
        [pq(selector(lateness), "lateness")],
        unit="s",
        description=lateness.description,
    )
    board.panel(
        "timeseries",
        "Loop overruns and cycles",
        [
            pq(f"increase({metric_name(overruns)}_total{{{s}}}[$__rate_interval])", "overruns"),
            pq(
                f"rate({metric_name(p['appliance.alive_counter'])}_total{{{s}}}[$__rate_interval])",
                "cycles/s",
            ),
        ],
        description=overruns.description,
    )
    status = p["appliance.status"]
    board.panel(
        "state-timeline",
        "Appliance status",
        [pq(f"{metric_name(status)}{{{s}}} == 1", "{{state}}")],
        width=24,
        height=5,
        options=TIMELINE,
    )
    board.row("Devices")
    device = f'{s}, node=~"$node|"'  # devices without a node (meters) are always shown
    board.panel(
        "state-timeline",
        "Devices up",
        [pq(f"{PREFIX}_device_up{{{device}}}", "{{device}}")],
        mappings=value_mappings({0: "down", 1: "up"}),
        options=TIMELINE,
    )
    board.panel(
        "timeseries",
        "Failed polls",
        [pq(f"increase({PREFIX}_device_errors_total{{{device}}}[$__rate_interval])", "{{device}}")],
    )
    board.panel(
        "timeseries",
        "Time since last successful poll",
        [pq(f"time() - {PREFIX}_device_last_success_timestamp_seconds{{{device}}}", "{{device}}")],
        unit="s",
    )
    board.panel(
        "timeseries",
        "SCADA heartbeat age",
        [
            pq(f"{PREFIX}_heartbeat_age_seconds{{{s}}}", "age"),
            pq(selector(p["heartbeat.timeout"]), "timeout"),
        ],
        unit="s",
    )
    board.row("Faces and commands")
    board.panel(
        "state-timeline",
        "Faces up",
        [pq(f"{PREFIX}_face_up{{{s}}}", "{{face}}")],
        mappings=value_mappings({0: "down", 1: "up"}),
        options=TIMELINE,
    )
    board.panel(
        "timeseries",
        "Commands by source and result",
        [
            pq(
                f"sum by (source, result) (increase({PREFIX}_commands_total{{{s}}}[$__rate_interval]))",
                "{{source}} {{result}}",
            )
        ],
    )
    restarts = p["appliance.face_restarts"]
    board.panel(
        "timeseries",
        "Face restarts",
        [pq(f"{metric_name(restarts)}_total{{{s}}}", "restarts")],
        description=restarts.description,
    )
    board.panel("timeseries", "Active alarms", [pq(selector(p["alarms.count"]), "alarms")])
    board.row("Archive")
    spool = [("spool_points", "points"), ("spool_batches", "batches")]
    board.panel(
        "timeseries",
        "Spool depth",
        [pq(f"{PREFIX}_archive_{name}{{{s}}}", legend) for name, legend in spool],
        description="Data waiting for the InfluxDB; grows during an outage, drains after.",
    )
    board.panel(
        "timeseries",
        "Spool oldest sample age",
        [pq(f"{PREFIX}_archive_spool_oldest_age_seconds{{{s}}}", "oldest")],
        unit="s",
        width=6,
    )
    board.panel(
        "timeseries",
        "Spool size",
        [pq(f"{PREFIX}_archive_spool_bytes{{{s}}}", "stored")],
        unit="bytes",
        width=6,
    )
    counters = [
        ("points_written", "written"),
        ("write_failures", "failed writes"),
        ("points_dropped", "dropped {{reason}}"),
        ("points_quarantined", "quarantined"),
    ]
    board.panel(
        "timeseries",
        "Archive throughput",
        [
            pq(f"rate({PREFIX}_archive_{name}_total{{{s}}}[$__rate_interval])", legend)
            for name, legend in counters
        ],
        unit="cps",
    )
    board.panel(
        "stat",
        "Archive backend",
        [pq(f"{PREFIX}_archive_backend_info{{{s}}}", "{{backend}}")],
        options={"reduceOptions": {"calcs": ["lastNotNull"]}, "textMode": "name"},
    )
    return board


def dashboards(table: PointTable | None = None) -> dict[str, dict[str, Any]]:
    """File name -> dashboard JSON."""
    p = Points(table or shipped_point_table())
    boards = [site_overview(p), battery_cluster(p), control_quality(p), appliance_health(p)]
    return {f"{b.uid.removeprefix('appliance-')}.json": b.build() for b in boards}


def render(board: dict[str, Any]) -> str:
    return json.dumps(board, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="dashboards directory")
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    stale = []
    for name, board in dashboards().items():
        path = args.out / name
        text = render(board)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        sys.stderr.write(
            "out of date (run python -m appliance.archive.dashboards): " + ", ".join(stale) + "\n"
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
