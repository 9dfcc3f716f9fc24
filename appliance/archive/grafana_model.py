"""A small builder for Grafana dashboard JSON (schema 39), enough for the appliance's boards.

Plain dictionaries, laid out left to right in rows of 24 columns; panel ids are given in
order, so regenerating a board gives byte-identical JSON. Queries come from the point table
(`influx_query`, `prom_expr` in `dashboards.py`), never typed by hand, so a renamed point or
metric breaks the generator's check instead of a dashboard in the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 39
GRID_WIDTH = 24

#: Data sources as the provisioning file names them (grafana/provisioning/datasources).
INFLUX = {"type": "influxdb", "uid": "appliance-influxdb"}
PROMETHEUS = {"type": "prometheus", "uid": "appliance-prometheus"}

#: Point units (models/points.yaml) and Prometheus base units to Grafana unit ids.
POINT_UNITS = {
    "W": "watt",
    "var": "voltampreact",
    "V": "volt",
    "A": "amp",
    "Hz": "hertz",
    "Wh": "watth",
    "kWh": "kwatth",
    "%": "percent",
    "°C": "celsius",
    "s": "s",
    "ms": "ms",
}
METRIC_UNITS = {
    "watts": "watt",
    "volts": "volt",
    "amperes": "amp",
    "hertz": "hertz",
    "joules": "joule",
    "ratio": "percentunit",
    "celsius": "celsius",
    "seconds": "s",
    "bytes": "bytes",
}


@dataclass(frozen=True, slots=True)
class Target:
    """One query of a panel: InfluxQL (`query`) or PromQL (`expr`)."""

    datasource: Mapping[str, str]
    text: str
    legend: str = ""

    def to_json(self, ref_id: str) -> dict[str, Any]:
        if self.datasource is INFLUX:
            target: dict[str, Any] = {
                "datasource": dict(self.datasource),
                "query": self.text,
                "rawQuery": True,
                "refId": ref_id,
                "resultFormat": "time_series",
            }
            if self.legend:
                target["alias"] = self.legend
            return target
        return {
            "datasource": dict(self.datasource),
            "editorMode": "code",
            "expr": self.text,
            "legendFormat": self.legend or "__auto",
            "range": True,
            "refId": ref_id,
        }


def value_mappings(states: Mapping[int, str]) -> list[dict[str, Any]]:
    """Grafana value mappings from a point's states (codes to names)."""
    options = {
        str(code): {"index": i, "text": name} for i, (code, name) in enumerate(states.items())
    }
    return [{"type": "value", "options": options}] if options else []


@dataclass
class Board:
    uid: str
    title: str
    description: str
    variables: list[dict[str, Any]] = field(default_factory=list)
    panels: list[dict[str, Any]] = field(default_factory=list)
    _x: int = 0
    _y: int = 0
    _row_height: int = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {
                "collapsed": False,
                "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": self._y},
                "id": len(self.panels) + 1,
                "panels": [],
                "title": title,
                "type": "row",
            }
        )
        self._y += 1

    def panel(
        self,
        kind: str,
        title: str,
        targets: Sequence[Target],
        *,
        unit: str | None = None,
        description: str = "",
        width: int = 12,
        height: int = 8,
        mappings: list[dict[str, Any]] | None = None,
        options: Mapping[str, Any] | None = None,
        custom: Mapping[str, Any] | None = None,
    ) -> None:
        if self._x + width > GRID_WIDTH:
            self._newline()
        datasource = targets[0].datasource
        defaults: dict[str, Any] = {"mappings": mappings or []}
        if unit is not None:
            defaults["unit"] = unit
        if custom:
            defaults["custom"] = dict(custom)
        self.panels.append(
            {
                "datasource": dict(datasource),
                "description": description,
                "fieldConfig": {"defaults": defaults, "overrides": []},
                "gridPos": {"h": height, "w": width, "x": self._x, "y": self._y},
                "id": len(self.panels) + 1,
                "options": dict(options or {}),
                "targets": [t.to_json(chr(ord("A") + i)) for i, t in enumerate(targets)],
                "title": title,
                "type": kind,
            }
        )
        self._x += width
        self._row_height = max(self._row_height, height)

    def _newline(self) -> None:
        if self._x:
            self._y += self._row_height
        self._x = 0
        self._row_height = 0

    def build(self, *, refresh: str = "10s", time_from: str = "now-6h") -> dict[str, Any]:
        return {
            "annotations": {"list": []},
            "description": self.description,
            "editable": False,
            "graphTooltip": 1,
            "links": [],
            "panels": self.panels,
            "refresh": refresh,
            "schemaVersion": SCHEMA_VERSION,
            "tags": ["appliance"],
            "templating": {"list": self.variables},
            "time": {"from": time_from, "to": "now"},
            "timezone": "browser",
            "title": self.title,
            "uid": self.uid,
            "version": 1,
        }


def query_variable(
    name: str,
    label: str,
    datasource: Mapping[str, str],
    query: str,
    *,
    multi: bool = False,
    all_value: str | None = None,
) -> dict[str, Any]:
    variable: dict[str, Any] = {
        "current": {},
        "datasource": dict(datasource),
        "definition": query,
        "hide": 0,
        "includeAll": multi,
        "label": label,
        "multi": multi,
        "name": name,
        "options": [],
        "query": query if datasource is INFLUX else {"query": query, "refId": f"{name}-query"},
        "refresh": 1,
        "regex": "",
        "sort": 3 if name == "node" else 1,  # nodes numerically
        "type": "query",
    }
    if all_value is not None:
        variable["allValue"] = all_value
    return variable
