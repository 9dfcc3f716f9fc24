"""What the archive writes, decided by the `archive` settings of models/points.yaml.

Each archived point becomes one field: measurement = its block (the device kind), field =
its local name, tags = site, device and (for templated blocks) node. A point is written at
most once per `every_s` bucket of its *sample* time (the first good sample in each aligned
bucket), so the archive rate does not depend on how often a device is polled, and a
restart does not shift the grid. Pure logic: time comes from the samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from appliance.archive.lineproto import FieldType, encode_line, format_field, to_ms
from appliance.config.schema import SiteConfig
from appliance.points.model import DataType, Point
from appliance.points.table import PointTable
from appliance.store import Quality, Sample, Value

#: The fleet's status record (requirement: active power, SoC and mode as their own measurement).
STATUS_MEASUREMENT = "cluster_status"
STATUS_FIELDS: tuple[tuple[str, str, FieldType], ...] = (
    ("cluster.active_power", "active_power", FieldType.FLOAT),
    ("cluster.soc", "soc", FieldType.FLOAT),
    ("controller.mode", "mode", FieldType.INTEGER),
)

#: A sample this much older than the last one archived means the wall clock was set back
#: (NTP after a cold start without RTC): start again from there instead of waiting for
#: the clock to catch up with the old buckets.
CLOCK_JUMP_S = 300.0

# Blocks measured by a configured meter are tagged with the meter's role in the site file.
_METER_ROLES = {"grid": "grid_meter", "pv": "pv_meter"}
_FLOAT_TYPES = frozenset({DataType.FLOAT32, DataType.FLOAT64})


@dataclass(frozen=True, slots=True)
class ArchiveTarget:
    """Where one point goes: measurement, field, tags and how often."""

    point_id: str
    measurement: str
    field: str
    field_type: FieldType
    tags: tuple[tuple[str, str], ...]  # sorted by key
    every_s: float


@dataclass(frozen=True, slots=True)
class ArchivedSample:
    target: ArchiveTarget
    value: Value
    timestamp_s: float


def field_type(point: Point) -> FieldType:
    return FieldType.FLOAT if point.type in _FLOAT_TYPES else FieldType.INTEGER


def device_name(config: SiteConfig, block: str, node: int | None) -> str:
    """The `device` tag: the name the site file gives the device, else the block's name."""
    devices = config.devices
    if block in _METER_ROLES:
        return _METER_ROLES[block]
    if node is not None and block in ("battery", "inverter"):
        nodes = devices.battery_nodes
        return nodes[node - 1].name if node <= len(nodes) else f"node{node}"
    if node is not None and block == "surplus":
        loads = devices.surplus_loads
        return loads[node - 1].name if node <= len(loads) else f"load{node}"
    return block


def archive_targets(config: SiteConfig, table: PointTable) -> dict[str, ArchiveTarget]:
    """Every archived point of the site, by point id."""
    site = config.site.id
    targets: dict[str, ArchiveTarget] = {}
    for point in table:
        spec = point.archive
        if spec is None:
            continue
        tags = [("device", device_name(config, point.block, point.node)), ("site", site)]
        if point.node is not None:
            tags.append(("node", str(point.node)))
        targets[point.id] = ArchiveTarget(
            point_id=point.id,
            measurement=spec.measurement,
            field=spec.field,
            field_type=field_type(point),
            tags=tuple(sorted(tags)),
            every_s=spec.every_s,
        )
    return targets


def usable(sample: Sample | None) -> bool:
    return (
        sample is not None
        and sample.quality is Quality.GOOD
        and sample.value is not None
        and sample.timestamp > 0
    )


class Sampler:
    """Picks the samples to archive: the first good one per point in each `every_s` bucket."""

    def __init__(self, targets: Mapping[str, ArchiveTarget]) -> None:
        self.targets = targets
        self._last_bucket: dict[str, int] = {}

    def select(self, changes: Mapping[str, Sample]) -> list[ArchivedSample]:
        picked: list[ArchivedSample] = []
        for point_id, sample in changes.items():
            target = self.targets.get(point_id)
            if target is None or not usable(sample) or sample.value is None:
                continue
            bucket = math.floor(sample.timestamp / target.every_s)
            last = self._last_bucket.get(point_id, -1)
            clock_set_back = (last - bucket) * target.every_s > CLOCK_JUMP_S
            if bucket <= last and not clock_set_back:
                continue  # already written in this bucket, or older than what was written
            self._last_bucket[point_id] = bucket
            picked.append(ArchivedSample(target, sample.value, sample.timestamp))
        return picked


def encode_samples(samples: Iterable[ArchivedSample]) -> list[str]:
    """Line protocol; samples of one device with one timestamp share a line."""
    grouped: dict[tuple[str, tuple[tuple[str, str], ...], int], list[tuple[str, str]]] = {}
    for item in samples:
        text = format_field(item.value, item.target.field_type)
        if text is None:
            continue
        key = (item.target.measurement, item.target.tags, to_ms(item.timestamp_s))
        grouped.setdefault(key, []).append((item.target.field, text))
    return [
        encode_line(measurement, tags, fields, ts_ms)
        for (measurement, tags, ts_ms), fields in grouped.items()
    ]


class StatusRecorder:
    """The periodic cluster status, one line per interval at the aligned interval start.

    Aligned timestamps make the record idempotent: a restarted archive that writes the
    status of the same interval again overwrites the same InfluxDB point instead of adding one.
    """

    def __init__(self, site: str, interval_s: float) -> None:
        self.site = site
        self.interval_s = interval_s
        self._last_bucket = -1

    def due(self, data_time_s: float, mirror: Mapping[str, Sample]) -> str | None:
        """The status line if a new interval has begun at `data_time_s`, else None."""
        if data_time_s <= 0:
            return None
        bucket = math.floor(data_time_s / self.interval_s)
        clock_set_back = (self._last_bucket - bucket) * self.interval_s > CLOCK_JUMP_S
        if bucket <= self._last_bucket and not clock_set_back:
            return None
        fields: list[tuple[str, str]] = []
        for point_id, name, kind in STATUS_FIELDS:
            sample = mirror.get(point_id)
            if not usable(sample) or sample is None or sample.value is None:
                continue
            text = format_field(sample.value, kind)
            if text is not None:
                fields.append((name, text))
        if not fields:
            return None  # nothing known yet: try again next cycle, same interval
        self._last_bucket = bucket
        return encode_line(
            STATUS_MEASUREMENT, [("site", self.site)], fields, to_ms(bucket * self.interval_s)
        )
