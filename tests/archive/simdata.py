"""Simulated data for the archive: every point of the simulated site, every 500 ms cycle.

Values are deterministic functions of the sample time, so a test knows exactly what the
archive must hold: float points follow a slow sine inside their range (rounded to 3
decimals), counters rise, enum points walk through their states, booleans flip every 15 s.
Every device's points of one cycle share its timestamp, as a poll stamps them.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Mapping
from pathlib import Path

from appliance.archive import ArchiveFace
from appliance.config import InfluxConfig, SiteConfig, simulated_site_config
from appliance.control.command_types import CommandResult
from appliance.northbound.face import FaceContext
from appliance.points.model import DataType, Kind, Point
from appliance.points.table import PointTable
from appliance.runtime.site_table import site_point_table
from appliance.store import Quality, Sample, Value

CYCLE_S = 0.5


def aligned_start(now_s: float, back_s: float) -> float:
    """A start time `back_s` ago, on a whole minute, so every archive period starts with it."""
    return float(math.floor((now_s - back_s) / 60.0) * 60)


def site_config(
    data_dir: Path,
    *,
    site_id: str,
    influx_url: str | None = None,
    bucket: str = "appliance",
    batch_size: int = 200,
    flush_interval_s: float = 0.2,
    org: str = "-",
    token_file: Path | None = None,
) -> SiteConfig:
    """The simulated site with its own id and data directory, writing to `influx_url`."""
    config = simulated_site_config()
    archive = dataclasses.replace(
        config.archive,
        spool=dataclasses.replace(config.archive.spool, path=data_dir / "spool"),
        local=dataclasses.replace(config.archive.local, path=data_dir / "archive"),
    )
    if influx_url is not None:
        token = token_file or data_dir / "influx.token"
        token.parent.mkdir(parents=True, exist_ok=True)
        token.write_text("appliance:secret\n")
        influx = InfluxConfig(
            url=influx_url,
            org=org,
            bucket=bucket,
            token_file=token,
            batch_size=batch_size,
            flush_interval_s=flush_interval_s,
        )
        archive = dataclasses.replace(archive, influxdb=influx)
    return dataclasses.replace(
        config,
        site=dataclasses.replace(config.site, id=site_id),
        data_dir=data_dir,
        archive=archive,
    )


def _phase(point_id: str) -> float:
    return (zlib.crc32(point_id.encode()) % 1000) / 1000.0 * 2 * math.pi


def value_at(point: Point, t: float, t0: float) -> Value:
    elapsed = t - t0
    floats = point.type in (DataType.FLOAT32, DataType.FLOAT64)
    value: Value
    if point.type is DataType.BOOL:
        value = point.id.endswith("comm_ok") or int(elapsed // 15) % 2 == 0
    elif point.type is DataType.ENUM:
        codes = sorted(point.states)
        value = codes[int(elapsed // 20) % len(codes)]
    elif point.type is DataType.TIMESTAMP:
        value = int(t) - 2
    elif point.kind is Kind.COUNTER:
        value = round(1000.0 + elapsed * 0.01, 3) if floats else int(elapsed * 2)
    else:
        low, high = point.range if point.range is not None else (0.0, 1000.0)
        fraction = 0.5 + 0.1 * math.sin(2 * math.pi * elapsed / 60.0 + _phase(point.id))
        value = low + (high - low) * fraction
        value = round(value, 3) if floats else int(value)
    return value


def cycle(table: PointTable, t: float, t0: float) -> dict[str, Sample]:
    return {p.id: Sample(value_at(p, t, t0), t, Quality.GOOD, 0.0) for p in table}


async def no_core(
    source: str, command: str, point_id: str | None, value: Value | None, user: str | None = None
) -> CommandResult:
    return CommandResult(0, True, "accepted")


def context(config: SiteConfig) -> FaceContext:
    return FaceContext(config, site_point_table(config), {}, no_core)


def feed(face: ArchiveFace, ctx: FaceContext, start_s: float, end_s: float, t0: float) -> int:
    """Apply every cycle with start_s <= t < end_s; the mirror first, as the faces host does."""
    mirror = ctx.mirror
    assert isinstance(mirror, dict)
    steps = round((end_s - start_s) / CYCLE_S)
    for k in range(steps):
        changes = cycle(ctx.table, start_s + k * CYCLE_S, t0)
        mirror.update(changes)
        face.apply(changes)
    return steps


def expected_times_ms(every_s: float, start_s: float, end_s: float) -> list[int]:
    """Archive times of a point in [start, end): the first sample of each aligned bucket."""
    count = round((end_s - start_s) / every_s)
    return [round((start_s + j * every_s) * 1000) for j in range(count)]


def archived_points(table: PointTable) -> list[Point]:
    return [p for p in table if p.archive is not None]


def tag_filter(tags: Mapping[str, str]) -> str:
    return " AND ".join(f"\"{k}\" = '{v}'" for k, v in sorted(tags.items()))
