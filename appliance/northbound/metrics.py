"""Prometheus face: every numeric point of the table as a metric, read from the faces' mirror.

Metrics are produced at scrape time from the latest samples, so publishing costs nothing
between scrapes. Names follow Prometheus conventions: `appliance_<block>_<point>_<unit>`,
counters end in `_total`, templated blocks carry a `node` label. Only usable samples are
exported: a stale or bad value disappears from the scrape instead of showing a frozen number.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from appliance.northbound.face import FaceContext
from appliance.points.model import Kind, Point
from appliance.points.table import PointTable
from appliance.store import Quality, Sample

log = logging.getLogger(__name__)

UNIT_SUFFIX = {
    "W": "watts",
    "var": "volt_amperes_reactive",
    "V": "volts",
    "A": "amperes",
    "Hz": "hertz",
    "kWh": "kilowatt_hours",
    "%": "percent",
    "°C": "celsius",
    "s": "seconds",
    "ms": "milliseconds",
}


def metric_name(point: Point) -> str:
    """`battery.3.soc` -> `appliance_battery_soc_percent`; the node goes into a label."""
    local = point.id.rsplit(".", 1)[1]
    suffix = UNIT_SUFFIX.get(point.unit)
    name = f"appliance_{point.block}_{local}"
    return f"{name}_{suffix}" if suffix and not name.endswith(suffix) else name


class PointCollector(Collector):
    def __init__(self, table: PointTable, mirror: Mapping[str, Sample], site_id: str) -> None:
        self._table = table
        self._mirror = mirror
        self._site_id = site_id

    def collect(self) -> Iterator[Any]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for point in self._table:
            name = metric_name(point)
            family = families.get(name)
            if family is None:
                labels = ["site", "node"] if point.node is not None else ["site"]
                doc = f"{point.label}: {point.description}"
                family = (
                    CounterMetricFamily(name, doc, labels=labels)
                    if point.kind is Kind.COUNTER
                    else GaugeMetricFamily(name, doc, labels=labels)
                )
                families[name] = family
            sample = self._mirror.get(point.id)
            if sample is None or sample.quality is not Quality.GOOD or sample.value is None:
                continue
            labels_values = (
                [self._site_id] if point.node is None else [self._site_id, str(point.node)]
            )
            family.add_metric(labels_values, float(sample.value))
        yield from families.values()


class MetricsFace:
    """The HTTP endpoint Prometheus scrapes; runs on its own thread inside the faces process."""

    name = "metrics"

    def __init__(self, context: FaceContext) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(
            PointCollector(context.table, context.mirror, context.config.site.id)
        )
        self._settings = context.config.faces.metrics
        self._server: Any = None
        self._thread: Any = None

    async def start(self) -> None:
        bind, port = self._settings.bind, self._settings.port
        self._server, self._thread = start_http_server(port, addr=bind, registry=self.registry)
        log.info("metrics: serving http://%s:%d/metrics", bind, port)

    def apply(self, changes: Mapping[str, Sample]) -> None:
        """Nothing to do: metrics are produced from the mirror at scrape time."""

    async def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None
