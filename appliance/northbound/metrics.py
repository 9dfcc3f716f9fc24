"""Prometheus face: the point table as metrics, plus device health, commands and the archive.

Everything is produced at scrape time from the faces' mirror and a few counters, so
publishing costs nothing between scrapes. Names follow the Prometheus conventions:

* points: `appliance_<block>_<point>_<base unit>`; values are converted to base units
  (ms -> seconds, kWh -> joules, % -> ratio 0..1), counters end in `_total`, timestamps in
  `_timestamp_seconds`, templated blocks carry a `node` label, every metric a `site` label;
  enum points (mode, state) are state sets: one series per state with a `state` label, 1 for
  the current one. A stale or bad value disappears from the scrape instead of showing a
  frozen number.
* device health, from the `comm_ok` points: `appliance_device_up`,
  `appliance_device_errors_total` (failed polls seen), `appliance_device_last_success_timestamp_seconds`.
* `appliance_heartbeat_age_seconds`, `appliance_commands_total{source,command,result}`,
  `appliance_face_up{face}` and the archive's `appliance_archive_*`.

Faces report commands and their own health through `FacesTelemetry`, an in-process object
of the faces process: wrap the command path with `telemetry.counting(submit)` and hand
the same object to `MetricsFace` and `telemetry.watch_archive(archive_face.stats)`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client import Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from appliance.archive.stats import ArchiveStats
from appliance.clock import Clock, SystemClock
from appliance.control.command_types import CommandResult
from appliance.northbound.face import CommandSubmitter, FaceContext
from appliance.points.model import Access, DataType, Kind, Point
from appliance.points.table import PointTable
from appliance.store import Quality, Sample, Value

log = logging.getLogger(__name__)

PREFIX = "appliance"
#: Point unit -> (base-unit suffix, factor from the point's unit to the base unit).
UNITS: dict[str, tuple[str, float]] = {
    "W": ("watts", 1.0),
    "var": ("volt_amperes_reactive", 1.0),
    "V": ("volts", 1.0),
    "A": ("amperes", 1.0),
    "Hz": ("hertz", 1.0),
    "Wh": ("joules", 3_600.0),
    "kWh": ("joules", 3_600_000.0),
    "%": ("ratio", 0.01),
    "°C": ("celsius", 1.0),
    "s": ("seconds", 1.0),
    "ms": ("seconds", 0.001),
}
COMM_OK = "comm_ok"
#: Names the generic rule would get wrong by promtool's lint ("_count" is reserved for
#: histograms, a name must not say "counter", "d" reads as days); without `_total`.
NAME_OVERRIDES: dict[str, str] = {
    "appliance.alive_counter": f"{PREFIX}_appliance_cycles",
    "heartbeat.counter": f"{PREFIX}_heartbeat_value",
    "alarms.count": f"{PREFIX}_alarms_active",
    "alarms.active": f"{PREFIX}_alarms_active_flags",
    "controller.p_term": f"{PREFIX}_controller_proportional_term_watts",
    "controller.i_term": f"{PREFIX}_controller_integral_term_watts",
    "controller.d_term": f"{PREFIX}_controller_derivative_term_watts",
}


def metric_name(point: Point) -> str:
    """`battery.3.soc` -> `appliance_battery_soc_ratio`; the node goes into a label.

    Counters get their `_total` from the exposition (`appliance_grid_import_energy_joules_total`).
    """
    override = NAME_OVERRIDES.get(point.id)
    if override is not None:
        return override
    local = point.id.rsplit(".", 1)[1]
    name = f"{PREFIX}_{point.block}_{local}"
    if point.type is DataType.TIMESTAMP:
        return f"{name}_timestamp_seconds"
    unit = UNITS.get(point.unit)
    if unit is not None and not name.endswith(f"_{unit[0]}"):
        name = f"{name}_{unit[0]}"
    return name


def metric_factor(point: Point) -> float:
    unit = UNITS.get(point.unit)
    return 1.0 if unit is None or point.type is DataType.TIMESTAMP else unit[1]


def exported(point: Point) -> bool:
    """Write-only points (a reset command) have no value to show."""
    return point.access is not Access.WRITE


def _good(sample: Sample | None) -> bool:
    return sample is not None and sample.quality is Quality.GOOD and sample.value is not None


# --------------------------------------------------------------------------- in-process API


@dataclass(frozen=True, slots=True)
class CommandKey:
    source: str  # the face: opcua, modbus, ... (without the client part after ":")
    command: str
    result: str  # "accepted" or the reject code (out_of_range, unavailable, ...)


class FacesTelemetry:
    """What the faces report to the metrics face, inside the faces process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._commands: dict[CommandKey, int] = {}
        self._archives: list[Callable[[], ArchiveStats]] = []
        self._faces: dict[str, bool] = {}
        self._gauges: dict[str, Callable[[], float]] = {}
        self._counters: dict[str, Callable[[], Mapping[str, float]]] = {}

    def record_command(self, source: str, command: str, result: CommandResult) -> None:
        outcome = (
            "accepted" if result.accepted else (result.code.value if result.code else "rejected")
        )
        # "modbus:10.0.0.7" -> "modbus": a label per client address would grow without bound.
        key = CommandKey(source.split(":", 1)[0], command, outcome)
        with self._lock:
            self._commands[key] = self._commands.get(key, 0) + 1

    def counting(self, submit: CommandSubmitter) -> CommandSubmitter:
        """The command path with every answer counted; give this to the faces' FaceContext."""
        return _CountingSubmitter(submit, self)

    def watch_archive(self, stats: Callable[[], ArchiveStats]) -> None:
        with self._lock:
            self._archives.append(stats)

    def watch_gauge(self, name: str, value: Callable[[], float]) -> None:
        """A face's own gauge, e.g. ``opcua_sessions``: read at every scrape."""
        with self._lock:
            self._gauges[name] = value

    def watch_counters(self, name: str, values: Callable[[], Mapping[str, float]]) -> None:
        """A face's own counters by label, e.g. ``modbus_exceptions`` by exception code."""
        with self._lock:
            self._counters[name] = values

    def gauges(self) -> dict[str, float]:
        with self._lock:
            providers = dict(self._gauges)
        return {name: value() for name, value in providers.items()}

    def counters(self) -> dict[str, Mapping[str, float]]:
        with self._lock:
            providers = dict(self._counters)
        return {name: values() for name, values in providers.items()}

    def face_running(self, name: str, running: bool) -> None:
        with self._lock:
            self._faces[name] = running

    def commands(self) -> dict[CommandKey, int]:
        with self._lock:
            return dict(self._commands)

    def archives(self) -> list[ArchiveStats]:
        with self._lock:
            providers = list(self._archives)
        return [stats() for stats in providers]

    def faces(self) -> dict[str, bool]:
        with self._lock:
            return dict(self._faces)


class _CountingSubmitter:
    def __init__(self, submit: CommandSubmitter, telemetry: FacesTelemetry) -> None:
        self._submit = submit
        self._telemetry = telemetry

    async def __call__(
        self,
        source: str,
        command: str,
        point_id: str | None,
        value: Value | None,
        user: str | None = None,
    ) -> CommandResult:
        result = await self._submit(source, command, point_id, value, user)
        self._telemetry.record_command(source, command, result)
        return result


# --------------------------------------------------------------------------- device health


@dataclass(slots=True)
class _Device:
    label: str  # the comm_ok point's device: grid, pv, battery.1, inverter.2
    block: str
    node: str
    errors: int = 0
    last_success_s: float | None = None
    last_failure_s: float = 0.0


class DeviceHealth:
    """Up, failed polls and last success per device, from its `comm_ok` samples.

    The poller writes `comm_ok` True after every answer and False after every failed poll,
    each with its own timestamp, so each new False sample is one failed poll.
    """

    def __init__(self, table: PointTable) -> None:
        self._lock = threading.Lock()
        self._devices: dict[str, _Device] = {
            p.id: _Device(p.id.removesuffix(f".{COMM_OK}"), p.block, str(p.node or ""))
            for p in table
            if p.id.endswith(f".{COMM_OK}")
        }

    def update(self, changes: Mapping[str, Sample]) -> None:
        with self._lock:
            for point_id, device in self._devices.items():
                sample = changes.get(point_id)
                if sample is None or sample.quality is not Quality.GOOD:
                    continue
                if sample.value:
                    if device.last_success_s is None or sample.timestamp > device.last_success_s:
                        device.last_success_s = sample.timestamp
                elif sample.timestamp > device.last_failure_s:
                    device.errors += 1
                    device.last_failure_s = sample.timestamp

    def families(self, mirror: Mapping[str, Sample], site: str) -> list[Any]:
        labels = ["site", "device", "block", "node"]
        up = GaugeMetricFamily(
            f"{PREFIX}_device_up",
            "1 while the device answers (its comm_ok point is true and fresh), else 0.",
            labels=labels,
        )
        errors = CounterMetricFamily(
            f"{PREFIX}_device_errors",
            "Failed polls of the device seen by the faces process since it started.",
            labels=labels,
        )
        last = GaugeMetricFamily(
            f"{PREFIX}_device_last_success_timestamp_seconds",
            "UTC time of the device's last successful poll.",
            labels=labels,
        )
        with self._lock:
            devices = [(pid, replace(d)) for pid, d in self._devices.items()]
        for point_id, device in devices:
            values = [site, device.label, device.block, device.node]
            sample = mirror.get(point_id)
            up.add_metric(values, 1.0 if _good(sample) and sample and sample.value else 0.0)
            errors.add_metric(values, float(device.errors))
            if device.last_success_s is not None:
                last.add_metric(values, device.last_success_s)
        return [up, errors, last]


# --------------------------------------------------------------------------- the collector


class PointCollector(Collector):
    """Builds every family at scrape time (on the HTTP server's thread)."""

    def __init__(
        self,
        table: PointTable,
        mirror: Mapping[str, Sample],
        site_id: str,
        *,
        health: DeviceHealth | None = None,
        telemetry: FacesTelemetry | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._table = table
        self._mirror = mirror
        self._site_id = site_id
        self._health = health or DeviceHealth(table)
        self._telemetry = telemetry
        self._clock: Clock = clock or SystemClock()

    def collect(self) -> Iterator[Any]:
        yield from self._point_families()
        yield from self._health.families(self._mirror, self._site_id)
        yield self._heartbeat_age()
        if self._telemetry is not None:
            yield from self._command_families(self._telemetry)
            yield from archive_families(self._telemetry.archives(), self._site_id)
            yield self._face_family(self._telemetry)
            yield from self._face_own_families(self._telemetry)

    def _point_families(self) -> Iterator[Any]:
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for point in self._table:
            if not exported(point):
                continue
            name = metric_name(point)
            family = families.get(name)
            if family is None:
                family = _family_for(point, name)
                families[name] = family
            # One .get per point: the mirror may be updated meanwhile on the faces' loop.
            sample = self._mirror.get(point.id)
            if sample is None or not _good(sample) or sample.value is None:
                continue
            labels = [self._site_id] if point.node is None else [self._site_id, str(point.node)]
            if point.type is DataType.ENUM:
                current = int(sample.value)
                for code, state in point.states.items():
                    family.add_metric([*labels, state], 1.0 if code == current else 0.0)
            else:
                family.add_metric(labels, float(sample.value) * metric_factor(point))
        yield from families.values()

    def _heartbeat_age(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            f"{PREFIX}_heartbeat_age_seconds",
            "Seconds since the supervising SCADA's last accepted heartbeat.",
            labels=["site"],
        )
        sample = self._mirror.get("heartbeat.last_time")
        if sample is not None and _good(sample) and sample.value:
            family.add_metric([self._site_id], max(0.0, self._clock.time() - float(sample.value)))
        return family

    def _command_families(self, telemetry: FacesTelemetry) -> Iterator[Any]:
        family = CounterMetricFamily(
            f"{PREFIX}_commands",
            "Commands answered by the core, by the face they came from and their result.",
            labels=["site", "source", "command", "result"],
        )
        for key, count in sorted(telemetry.commands().items(), key=lambda kv: str(kv[0])):
            family.add_metric([self._site_id, key.source, key.command, key.result], float(count))
        yield family

    def _face_own_families(self, telemetry: FacesTelemetry) -> Iterator[Any]:
        """What the faces count themselves: OPC UA sessions, Modbus requests and exceptions."""
        for name, value in sorted(telemetry.gauges().items()):
            gauge = GaugeMetricFamily(
                f"{PREFIX}_{name}", FACE_METRIC_HELP.get(name, name), labels=["site"]
            )
            gauge.add_metric([self._site_id], value)
            yield gauge
        for name, values in sorted(telemetry.counters().items()):
            label = FACE_COUNTER_LABEL.get(name, "kind")
            counter = CounterMetricFamily(
                f"{PREFIX}_{name}", FACE_METRIC_HELP.get(name, name), labels=["site", label]
            )
            for key, count in sorted(values.items()):
                counter.add_metric([self._site_id, key], count)
            yield counter

    def _face_family(self, telemetry: FacesTelemetry) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            f"{PREFIX}_face_up",
            "1 while the face (opcua, modbus, archive, metrics) is serving.",
            labels=["site", "face"],
        )
        for name, running in sorted(telemetry.faces().items()):
            family.add_metric([self._site_id, name], 1.0 if running else 0.0)
        return family


FACE_METRIC_HELP = {
    "opcua_sessions": "OPC UA client sessions open now.",
    "modbus_requests": "Modbus requests answered, by outcome (ok or exception).",
    "modbus_exceptions": "Modbus exception responses sent, by exception code.",
}
FACE_COUNTER_LABEL = {"modbus_requests": "outcome", "modbus_exceptions": "code"}


def _family_for(point: Point, name: str) -> GaugeMetricFamily | CounterMetricFamily:
    labels = ["site", "node"] if point.node is not None else ["site"]
    doc = f"{point.label}: {point.description}"
    if point.type is DataType.ENUM:
        states = ", ".join(point.states.values())
        return GaugeMetricFamily(name, f"{doc} State set ({states}).", labels=[*labels, "state"])
    if point.kind is Kind.COUNTER:
        return CounterMetricFamily(name, doc, labels=labels)
    return GaugeMetricFamily(name, doc, labels=labels)


def archive_families(archives: list[ArchiveStats], site: str) -> list[Any]:
    """The archive's health; families are present (empty) when no archive is watched."""
    labels = ["site"]

    def gauge(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"{PREFIX}_archive_{name}", doc, labels=labels)

    def counter(name: str, doc: str, extra: list[str] | None = None) -> CounterMetricFamily:
        return CounterMetricFamily(f"{PREFIX}_archive_{name}", doc, labels=labels + (extra or []))

    backend = GaugeMetricFamily(
        f"{PREFIX}_archive_backend_info",
        "Where the archive writes: influxdb, local, or off (local archive unusable).",
        labels=["site", "backend"],
    )
    batches = gauge("spool_batches", "Batches waiting in the spool for the InfluxDB.")
    points = gauge("spool_points", "Points (lines) waiting in the spool for the InfluxDB.")
    size = gauge("spool_bytes", "Stored (compressed) size of the spool.")
    age = gauge("spool_oldest_age_seconds", "Age of the oldest sample in the spool; 0 if empty.")
    durable = gauge("spool_durable", "1 if the spool is on disk; 0 if it fell back to memory.")
    written = counter("points_written", "Points accepted by the InfluxDB or the local archive.")
    failures = counter("write_failures", "Write attempts that failed and will be retried.")
    dropped = counter("points_dropped", "Points dropped by the spool's bounds.", extra=["reason"])
    quarantined = counter("batches_quarantined", "Batches refused by the server as bad data.")
    q_points = counter("points_quarantined", "Points in batches refused as bad data.")
    last = gauge("last_success_timestamp_seconds", "UTC time of the last successful write.")
    for stats in archives:
        values = [site]
        backend.add_metric([site, stats.backend], 1.0)
        batches.add_metric(values, stats.spool_batches)
        points.add_metric(values, stats.spool_points)
        size.add_metric(values, stats.spool_bytes)
        age.add_metric(values, stats.spool_oldest_age_s)
        durable.add_metric(values, 1.0 if stats.spool_durable else 0.0)
        written.add_metric(values, stats.points_written)
        failures.add_metric(values, stats.write_failures)
        dropped.add_metric([site, "max_bytes"], stats.points_dropped_size)
        dropped.add_metric([site, "max_age"], stats.points_dropped_age)
        quarantined.add_metric(values, stats.batches_quarantined)
        q_points.add_metric(values, stats.points_quarantined)
        if stats.last_success_s is not None:
            last.add_metric(values, stats.last_success_s)
    return [
        backend,
        *(batches, points, size, age, durable),
        *(written, failures, dropped, quarantined, q_points, last),
    ]


# --------------------------------------------------------------------------- the face


LATENESS_POINT = "appliance.loop_lateness"  # ms
LATENESS_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class MetricsFace:
    """The HTTP endpoint Prometheus scrapes; runs on its own thread inside the faces process."""

    name = "metrics"

    def __init__(
        self,
        context: FaceContext,
        *,
        telemetry: FacesTelemetry | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.health = DeviceHealth(context.table)
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(
            PointCollector(
                context.table,
                context.mirror,
                context.config.site.id,
                health=self.health,
                telemetry=telemetry,
                clock=clock,
            )
        )
        # Every cycle's lateness, as a distribution: the gauge shows only the last cycle,
        # which a 15 s scrape samples one cycle in thirty of.
        self.loop_lateness = Histogram(
            f"{PREFIX}_control_loop_lateness_seconds",
            "How late each control cycle started against its schedule (every cycle the faces "
            "received; cycles coalesced by a busy faces process are not counted).",
            ["site"],
            buckets=LATENESS_BUCKETS_S,
            registry=self.registry,
        ).labels(context.config.site.id)
        self._settings = context.config.faces.metrics
        self._server: Any = None
        self._thread: Any = None
        self.port: int | None = None

    async def start(self) -> None:
        bind, port = self._settings.bind, self._settings.port
        self._server, self._thread = start_http_server(port, addr=bind, registry=self.registry)
        self.port = int(self._server.server_port)
        if self.telemetry is not None:
            self.telemetry.face_running(self.name, True)
        log.info("metrics: serving http://%s:%d/metrics", bind, self.port)

    def apply(self, changes: Mapping[str, Sample]) -> None:
        """Device health and the lateness histogram need the stream; the rest is read from
        the mirror at scrape time."""
        self.health.update(changes)
        lateness = changes.get(LATENESS_POINT)
        if lateness is not None and _good(lateness) and isinstance(lateness.value, int | float):
            self.loop_lateness.observe(float(lateness.value) / 1000.0)

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            # shutdown() waits for serve_forever's poll loop (up to 0.5 s): not on the loop.
            await asyncio.to_thread(server.shutdown)
            server.server_close()
            await asyncio.to_thread(self._thread.join, 5)
        if self.telemetry is not None:
            self.telemetry.face_running(self.name, False)
