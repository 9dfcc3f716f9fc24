"""The archive against VictoriaMetrics, which serves InfluxDB's `/api/v2/write` natively.

This exercises the real v2 write path of influxdb-client (no adapter in between): gzip,
`precision=ms`, the org and bucket parameters. VictoriaMetrics names each field
`<measurement>_<field>` and keeps the tags as labels.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from appliance.archive import STATUS_MEASUREMENT, ArchiveFace, archive_targets
from tests.archive import simdata
from tests.archive.conftest import wait_for
from tests.archive.servers import VictoriaMetrics, wait_until

pytestmark = pytest.mark.slow


async def test_every_archived_point_reaches_victoriametrics_over_the_v2_write_api(
    victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    site = "victoria"
    config = simdata.site_config(
        tmp_path, site_id=site, influx_url=victoria.url, bucket="appliance", org="site-org"
    )
    ctx = simdata.context(config)
    t0 = simdata.aligned_start(time.time(), 180)
    face = ArchiveFace(ctx, retry_initial_s=0.05, retry_max_s=0.3)
    await face.start()
    try:
        simdata.feed(face, ctx, t0, t0 + 120, t0)
        await face.sync()
        await wait_for(lambda: face.stats().spool_batches == 0, 10, "spool drained")
        stats = face.stats()
    finally:
        await face.stop()
    assert stats.write_failures == 0
    assert stats.batches_quarantined == 0

    targets = archive_targets(config, ctx.table)
    expected_series = len(targets) + 3  # + the three fields of the cluster status
    found: dict[tuple[str, tuple[tuple[str, str], ...]], dict[int, float]] = {}

    def exported() -> bool:
        found.clear()
        for series in victoria.export(f'{{site="{site}"}}'):
            labels = dict(series["metric"])
            name = labels.pop("__name__")
            key = (name, tuple(sorted(labels.items())))
            found[key] = dict(zip(series["timestamps"], series["values"], strict=True))
        return len(found) >= expected_series

    wait_until(exported, 10, "all series exported")
    assert len(found) == expected_series
    for point_id, target in targets.items():
        point = ctx.table[point_id]
        samples = found[(f"{target.measurement}_{target.field}", target.tags)]
        expected = simdata.expected_times_ms(target.every_s, t0, t0 + 120)
        assert sorted(samples) == expected, point_id
        for ts_ms in expected:
            want = float(simdata.value_at(point, ts_ms / 1000.0, t0))
            assert samples[ts_ms] == pytest.approx(want, rel=1e-9, abs=1e-9), point_id
    status = found[(f"{STATUS_MEASUREMENT}_soc", (("site", site),))]
    assert sorted(status) == simdata.expected_times_ms(
        config.control.telemetry_interval_s, t0, t0 + 120
    )
