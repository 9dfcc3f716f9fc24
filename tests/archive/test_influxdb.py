"""The archive against a real InfluxDB (1.6.7 behind the v2 write adapter), read back with InfluxQL.

Covers: every archived point with its measurement, tags, field and sample timestamps; the
archive periods of the point table; the cluster status measurement; gzip on the wire; an
outage with a restart of the writer in the middle (nothing lost, nothing doubled); a batch
refused as bad data (quarantined, the others go on); 5xx and 429 answers (retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.archive import STATUS_MEASUREMENT, ArchiveFace, archive_targets
from appliance.archive.forwarder import Backoff, Forwarder
from appliance.archive.influx import InfluxWriter
from appliance.archive.spool import Spool
from appliance.clock import SystemClock
from appliance.points.table import PointTable
from tests.archive import simdata
from tests.archive.conftest import ArchivedSite, wait_for
from tests.archive.servers import InfluxServer, InfluxV2Adapter

pytestmark = pytest.mark.slow


def read_fields(
    influxd: InfluxServer, db: str, measurement: str, site: str
) -> dict[tuple[tuple[str, str], ...], dict[str, dict[int, Any]]]:
    """{sorted tags: {field: {time ms: value}}} of one measurement of one site."""
    out: dict[tuple[tuple[str, str], ...], dict[str, dict[int, Any]]] = {}
    for series in influxd.series(
        f'SELECT * FROM "{measurement}" WHERE "site" = \'{site}\' GROUP BY *',  # noqa: S608
        db,
    ):
        tags = tuple(sorted((k, v) for k, v in series.get("tags", {}).items() if v))
        columns = series["columns"]
        fields = out.setdefault(tags, defaultdict(dict))
        for row in series["values"]:
            for name, value in zip(columns[1:], row[1:], strict=True):
                if value is not None:
                    fields[name][row[0]] = value
    return out


def check_archive(
    influxd: InfluxServer, db: str, table: PointTable, site: str, start: float, end: float
) -> int:
    """Assert every archived point holds exactly its expected samples; returns how many."""
    config_targets = archive_targets(simdata.site_config(Path("/x"), site_id=site), table)
    by_measurement: dict[str, Any] = {}
    checked = 0
    for point in simdata.archived_points(table):
        target = config_targets[point.id]
        if target.measurement not in by_measurement:
            by_measurement[target.measurement] = read_fields(influxd, db, target.measurement, site)
        series = by_measurement[target.measurement].get(target.tags)
        assert series is not None, f"{point.id}: no series with tags {target.tags}"
        written = series.get(target.field, {})
        expected = simdata.expected_times_ms(target.every_s, start, end)
        assert sorted(written) == expected, f"{point.id}: times differ"
        for ts_ms in expected:
            want = simdata.value_at(point, ts_ms / 1000.0, start)
            assert written[ts_ms] == pytest.approx(float(want)), f"{point.id} at {ts_ms}"
        checked += len(expected)
    return checked


def test_every_archived_point_is_in_influxdb_with_tags_fields_and_sample_times(
    archived_site: ArchivedSite, influxd: InfluxServer
) -> None:
    site = archived_site
    checked = check_archive(
        influxd, site.db, site.table, site.config.site.id, site.start_s, site.end_s
    )
    assert checked > 10_000  # three minutes of the whole site
    # Lines are counted as InfluxDB points; nothing failed, dropped or was refused.
    assert site.stats.points_written > 0
    assert site.stats.write_failures == 0
    assert site.stats.points_dropped == 0
    assert site.stats.batches_quarantined == 0


def test_tags_name_the_site_device_and_node(
    archived_site: ArchivedSite, influxd: InfluxServer
) -> None:
    db, site = archived_site.db, archived_site.config.site.id
    battery = influxd.series(
        f'SHOW TAG VALUES FROM "battery" WITH KEY IN ("device", "node", "site") WHERE "site" = \'{site}\'',
        db,
    )
    values = {(row[0], row[1]) for s in battery for row in s["values"]}
    assert values == {
        ("device", "node1"),
        ("device", "node2"),
        ("node", "1"),
        ("node", "2"),
        ("site", site),
    }
    grid = influxd.series('SHOW TAG VALUES FROM "grid" WITH KEY = "device"', db)
    assert [row[1] for s in grid for row in s["values"]] == ["grid_meter"]
    # Field types follow the point table, not the Python value: floats stay floats.
    keys = {
        row[0]: row[1]
        for s in influxd.series('SHOW FIELD KEYS FROM "battery"', db)
        for row in s["values"]
    }
    assert keys["soc"] == "float"
    assert keys["comm_ok"] == "integer"
    assert keys["alarm_flags"] == "integer"


def test_cluster_status_is_its_own_measurement_every_telemetry_interval(
    archived_site: ArchivedSite, influxd: InfluxServer
) -> None:
    site = archived_site
    rows = influxd.series(
        f'SELECT active_power, soc, mode FROM "{STATUS_MEASUREMENT}" WHERE "site" = \'{site.config.site.id}\'',  # noqa: S608
        site.db,
    )[0]["values"]
    interval = site.config.control.telemetry_interval_s
    assert [r[0] for r in rows] == simdata.expected_times_ms(interval, site.start_s, site.end_s)
    table = site.table
    for ts_ms, active_power, soc, mode in rows:
        t = ts_ms / 1000.0
        assert active_power == simdata.value_at(table["cluster.active_power"], t, site.t0)
        assert soc == simdata.value_at(table["cluster.soc"], t, site.t0)
        assert mode == simdata.value_at(table["controller.mode"], t, site.t0)


def test_writes_use_the_v2_api_with_gzip(archived_site: ArchivedSite) -> None:
    assert archived_site.requests > 1  # batched by size: several requests
    assert archived_site.gzip_requests == archived_site.requests


async def test_outage_with_a_writer_restart_loses_nothing_and_doubles_nothing(
    tmp_path: Path,
) -> None:
    server = InfluxServer(tmp_path / "influxd")
    server.start()
    adapter = InfluxV2Adapter(server.url)
    await adapter.start()
    db = "outage"
    server.create_database(db)
    config = simdata.site_config(
        tmp_path / "appliance", site_id="outage", influx_url=adapter.url, bucket=db
    )
    ctx = simdata.context(config)
    t0 = simdata.aligned_start(time.time(), 400)
    faces: list[ArchiveFace] = []
    try:
        face = ArchiveFace(ctx, retry_initial_s=0.05, retry_max_s=0.3)
        faces.append(face)
        await face.start()
        simdata.feed(face, ctx, t0, t0 + 60, t0)
        await face.sync()
        await wait_for(lambda: face.stats().spool_batches == 0, 10, "first minute written")

        # The server goes away: connection refused from now on.
        server.stop()
        await adapter.stop()
        simdata.feed(face, ctx, t0 + 60, t0 + 120, t0)
        await face.sync()
        await wait_for(lambda: face.stats().write_failures >= 2, 10, "failed writes")
        waiting = face.stats().spool_batches
        assert waiting > 0

        # The writer restarts during the outage: the spool on disk carries the data over.
        await face.stop()
        face = ArchiveFace(ctx, retry_initial_s=0.05, retry_max_s=0.3)
        faces.append(face)
        await face.start()
        assert face.stats().spool_batches == waiting
        simdata.feed(face, ctx, t0 + 120, t0 + 180, t0)
        await face.sync()
        assert face.stats().spool_oldest_age_s > 100  # oldest waiting sample: t0 + 60

        # The server comes back on the same address; the spool drains oldest first.
        server.start()
        await adapter.start()
        await wait_for(lambda: face.stats().spool_batches == 0, 15, "spool drained")
        assert face.stats().points_dropped == 0
        checked = check_archive(server, db, ctx.table, "outage", t0, t0 + 180)
        assert checked > 10_000
        status = server.series(f'SELECT count(soc) FROM "{STATUS_MEASUREMENT}"', db)  # noqa: S608
        assert status[0]["values"][0][1] == 18  # one per 10 s, none twice across the restart
    finally:
        for made in faces:
            await made.stop()
        await adapter.stop()
        server.stop()


def make_forwarder(spool: Spool, url: str, bucket: str) -> Forwarder:
    async def call(fn: Callable[[Spool], Any]) -> Any:
        return fn(spool)

    async def nothing() -> None:
        return None

    writer = InfluxWriter(url, "-", bucket, lambda: "user:pass")
    backoff = Backoff(0.05, 0.3, random.Random(1))
    return Forwarder(call, writer, clock=SystemClock(), backoff=backoff, on_change=nothing)


async def forward_until_empty(forwarder: Forwarder, spool: Spool, what: str) -> None:
    task = asyncio.create_task(forwarder.run(), name="forwarder")
    try:
        await wait_for(lambda: spool.depth().batches == 0, 10, what)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await forwarder.close()


async def test_a_batch_refused_as_bad_data_is_quarantined_and_does_not_block_the_others(
    influxd: InfluxServer, tmp_path: Path
) -> None:
    db = "quarantine"
    influxd.create_database(db)
    adapter = InfluxV2Adapter(influxd.url)
    await adapter.start()
    spool = Spool(tmp_path / "spool.sqlite", max_bytes=1_000_000, max_age_s=86_400)
    forwarder = make_forwarder(spool, adapter.url, db)
    now_ms = int(time.time() * 1000)
    spool.add(f"grid,site=q active_power=1.5 {now_ms}".encode(), 1, now_ms / 1000)
    spool.add(f"grid,site=q active_power= {now_ms + 1}".encode(), 1, now_ms / 1000)  # malformed
    spool.add(f"grid,site=q active_power=2.5 {now_ms + 2}".encode(), 1, now_ms / 1000)
    try:
        await forward_until_empty(forwarder, spool, "spool drained")
    finally:
        await adapter.stop()
    rows = influxd.series('SELECT active_power FROM "grid"', db)[0]["values"]
    assert [r[1] for r in rows] == [1.5, 2.5]
    quarantined = spool.quarantined()
    assert [(q.status, q.lines) for q in quarantined] == [(400, 1)]
    assert "active_power=" in quarantined[0].payload.decode()
    assert "missing field value" in quarantined[0].reason
    assert forwarder.counters.batches_quarantined == 1
    assert forwarder.counters.points_written == 2
    spool.close()


@pytest.mark.parametrize(
    ("status", "retry_after"), [(503, None), (500, None), (429, "0"), (404, None)]
)
async def test_server_errors_and_throttling_are_retried_until_written(
    influxd: InfluxServer, tmp_path: Path, status: int, retry_after: str | None
) -> None:
    db = f"retry_{status}"
    influxd.create_database(db)
    adapter = InfluxV2Adapter(influxd.url)
    adapter.fail_with, adapter.fail_times, adapter.retry_after = status, 3, retry_after
    await adapter.start()
    spool = Spool(tmp_path / "spool.sqlite", max_bytes=1_000_000, max_age_s=86_400)
    forwarder = make_forwarder(spool, adapter.url, db)
    now_ms = int(time.time() * 1000)
    spool.add(f"grid,site=r active_power=7.5 {now_ms}".encode(), 1, now_ms / 1000)
    try:
        await forward_until_empty(forwarder, spool, "written after the failures")
    finally:
        await adapter.stop()
    assert adapter.log.answered[status] == 3
    assert forwarder.counters.write_failures == 3
    assert forwarder.counters.batches_quarantined == 0
    assert influxd.series('SELECT active_power FROM "grid"', db)[0]["values"][0][1] == 7.5
    spool.close()
