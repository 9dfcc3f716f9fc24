"""Real servers for the archive tests: influxd 1.6.7, VictoriaMetrics and Prometheus.

Session-scoped where a start costs time or the data is shared: one influxd (each test
uses its own database), one VictoriaMetrics (each test its own site id), and two prepared
data sets that several tests read: `archived_site` (the simulated site archived into
InfluxDB through the v2 adapter) and `scraped_site` (a metrics face scraped by Prometheus).
Each server lives in its own temporary directory on 127.0.0.1 with ephemeral ports and is
stopped at the end, also when a test failed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.archive import ArchiveFace, ArchiveStats
from appliance.config import SiteConfig
from appliance.northbound.face import FaceContext
from appliance.northbound.metrics import FacesTelemetry, MetricsFace
from appliance.points.table import PointTable
from appliance.runtime.site_table import site_point_table
from tests.archive import simdata
from tests.archive.servers import (
    InfluxServer,
    InfluxV2Adapter,
    Prometheus,
    VictoriaMetrics,
    http,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "rules" / "appliance.rules.yml"
ARCHIVED_SECONDS = 180.0  # simulated time archived by `archived_site`


def _need(binary: str) -> None:
    if shutil.which(binary) is None:
        pytest.fail(f"{binary} is not installed: run scripts/install-test-servers.sh (make test)")


@pytest.fixture(scope="session")
def influxd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxServer]:
    _need("influxd")
    server = InfluxServer(tmp_path_factory.mktemp("influxd"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def victoria(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    _need("victoria-metrics")
    server = VictoriaMetrics(tmp_path_factory.mktemp("victoria"))
    try:
        server.start()
        yield server
    finally:
        server.stop()


async def wait_for(predicate: object, timeout_s: float, what: str) -> None:
    """Poll an async test condition without blocking the faces' loop."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout_s} s")


@dataclass(frozen=True)
class ArchivedSite:
    """The simulated site archived into InfluxDB: what was written and where."""

    db: str
    config: SiteConfig
    table: PointTable
    t0: float
    start_s: float
    end_s: float
    stats: ArchiveStats
    requests: int
    gzip_requests: int


async def _archive_into(influxd: InfluxServer, config: SiteConfig, t0: float) -> ArchivedSite:
    adapter = InfluxV2Adapter(influxd.url)
    await adapter.start()
    ctx = simdata.context(
        dataclasses.replace(
            config,
            archive=dataclasses.replace(
                config.archive,
                influxdb=dataclasses.replace(config.archive.influxdb, url=adapter.url)
                if config.archive.influxdb
                else None,
            ),
        )
    )
    face = ArchiveFace(ctx, retry_initial_s=0.05, retry_max_s=0.5)
    await face.start()
    try:
        simdata.feed(face, ctx, t0, t0 + ARCHIVED_SECONDS, t0)
        await face.sync()
        await wait_for(lambda: face.stats().spool_batches == 0, 20, "spool drained")
        stats = face.stats()
    finally:
        await face.stop()
        await adapter.stop()
    assert ctx.config.archive.influxdb is not None
    return ArchivedSite(
        db=ctx.config.archive.influxdb.bucket.split("/")[0],
        config=ctx.config,
        table=ctx.table,
        t0=t0,
        start_s=t0,
        end_s=t0 + ARCHIVED_SECONDS,
        stats=stats,
        requests=adapter.log.requests,
        gzip_requests=adapter.log.gzip_requests,
    )


@pytest.fixture(scope="session")
def archived_site(influxd: InfluxServer, tmp_path_factory: pytest.TempPathFactory) -> ArchivedSite:
    """Three simulated minutes of the whole site, ending about now, archived into `site_db`."""
    db = "site_db"
    influxd.create_database(db)
    config = simdata.site_config(
        tmp_path_factory.mktemp("archived-site"),
        site_id="archived",
        influx_url="http://placeholder.invalid",  # replaced by the adapter's URL
        bucket=f"{db}/autogen",
    )
    t0 = simdata.aligned_start(time.time(), ARCHIVED_SECONDS + 60)
    return asyncio.run(_archive_into(influxd, config, t0))


# --------------------------------------------------------------------------- Prometheus


@dataclass
class ScrapedSite:
    """A metrics face with a filled mirror, scraped by a running Prometheus."""

    prometheus: Prometheus
    face: MetricsFace
    context: FaceContext
    telemetry: FacesTelemetry


def archive_stats_sample() -> ArchiveStats:
    return ArchiveStats(
        backend="influxdb",
        spool_durable=True,
        spool_batches=2,
        spool_points=40,
        spool_bytes=1200,
        spool_oldest_age_s=12.5,
        points_written=1000,
        write_failures=3,
        points_dropped_size=0,
        points_dropped_age=0,
        batches_quarantined=1,
        points_quarantined=5,
        last_success_s=time.time(),
    )


def filled_context(site_id: str) -> FaceContext:
    config = simdata.site_config(Path("/nonexistent"), site_id=site_id)
    faces = dataclasses.replace(
        config.faces, metrics=dataclasses.replace(config.faces.metrics, port=0)
    )
    config = dataclasses.replace(config, faces=faces)
    ctx = FaceContext(config, site_point_table(config), {}, simdata.no_core)
    now = time.time()
    mirror = ctx.mirror
    assert isinstance(mirror, dict)
    mirror.update(simdata.cycle(ctx.table, now, math.floor(now / 60) * 60))
    return ctx


@pytest.fixture(scope="session")
def scraped_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScrapedSite]:
    _need("prometheus")
    telemetry = FacesTelemetry()
    ctx = filled_context("scraped")
    ctx = dataclasses.replace(ctx, submit=telemetry.counting(ctx.submit))
    telemetry.watch_archive(archive_stats_sample)
    face = MetricsFace(ctx, telemetry=telemetry)

    async def start() -> None:
        await face.start()
        face.apply(ctx.mirror)
        await ctx.submit("opcua", "set_mode", "controller.mode", 2)
        await ctx.submit("modbus", "heartbeat", "heartbeat.counter", 7)

    asyncio.run(start())
    prometheus = Prometheus(
        tmp_path_factory.mktemp("prometheus"), [f"127.0.0.1:{face.port}"], [RULES]
    )
    try:
        prometheus.start()
        # The first scrape comes 6-9 s after start (discovery throttle); rates need two.
        wait_until(prometheus.targets_up, 30, "first scrape")
        wait_until(
            lambda: bool(
                prometheus.query("count_over_time(appliance_appliance_cycles_total[1m]) >= 3")
            ),
            15,
            "three scrapes",
        )
        yield ScrapedSite(prometheus, face, ctx, telemetry)
    finally:
        prometheus.stop()
        asyncio.run(face.stop())


def scrape_text(port: int) -> str:
    status, body = http("GET", f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return body.decode()
