"""The local archive: the default without InfluxDB, and the HistoryRead query API on top of it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from appliance.archive import ArchiveFace, HistoryUnavailable, LocalArchive
from appliance.points.model import DataType
from tests.archive import simdata


async def test_without_influxdb_the_face_keeps_a_local_archive_that_answers_history_reads(
    tmp_path: Path,
) -> None:
    config = simdata.site_config(tmp_path, site_id="local")
    ctx = simdata.context(config)
    t0 = simdata.aligned_start(time.time(), 300)
    face = ArchiveFace(ctx)
    await face.start()
    try:
        simdata.feed(face, ctx, t0, t0 + 120, t0)
        soc = ctx.table["battery.2.soc"]  # archived every 5 s
        forward = await face.read_raw("battery.2.soc", t0, t0 + 60, limit=0)
        assert [s.timestamp for s in forward] == [t0 + 5 * j for j in range(12)]
        assert [s.value for s in forward] == [
            simdata.value_at(soc, s.timestamp, t0) for s in forward
        ]
        limited = await face.read_raw("battery.2.soc", t0, t0 + 120, limit=3)
        assert [s.timestamp for s in limited] == [t0, t0 + 5, t0 + 10]
        # Start after end reads backwards, newest first; the end stays exclusive.
        backward = await face.read_raw("battery.2.soc", t0 + 60, t0 + 40, limit=0)
        assert [s.timestamp for s in backward] == [t0 + 60, t0 + 55, t0 + 50, t0 + 45]
        exact = await face.read_raw("battery.2.soc", t0 + 30, t0 + 30, limit=0)
        assert [s.timestamp for s in exact] == [t0 + 30]
        comm = await face.read_raw("grid.comm_ok", t0, t0 + 2, limit=0)
        assert [s.value for s in comm] == [True, True]  # booleans come back as booleans
        with pytest.raises(HistoryUnavailable):
            await face.read_raw("appliance.alive_counter", t0, t0 + 60)  # archive: false
        stats = face.stats()
        assert stats.backend == "local"
        assert stats.points_written > 5_000
        assert face.has_history
    finally:
        await face.stop()

    # A restart reads what the previous run stored.
    again = ArchiveFace(ctx)
    await again.start()
    try:
        energy = await again.read_raw("grid.import_energy", t0, t0 + 120)
        assert [s.timestamp for s in energy] == [t0, t0 + 60]
        assert isinstance(energy[0].value, float)
    finally:
        await again.stop()
    assert (tmp_path / "archive" / "archive.sqlite").exists()


async def test_with_influxdb_there_is_no_local_history(tmp_path: Path) -> None:
    config = simdata.site_config(tmp_path, site_id="remote", influx_url="http://127.0.0.1:9")
    face = ArchiveFace(simdata.context(config))
    await face.start()
    try:
        assert not face.has_history
        with pytest.raises(HistoryUnavailable):
            await face.read_raw("grid.active_power", 0.0, 1.0)
    finally:
        await face.stop()


def test_retention_removes_only_samples_older_than_the_configured_days(tmp_path: Path) -> None:
    archive = LocalArchive(
        tmp_path / "a.sqlite",
        retention_days=2,
        point_types={"grid.active_power": DataType.FLOAT32, "grid.comm_ok": DataType.BOOL},
    )
    day_ms = 86_400_000
    now_s = 10 * 86_400.0
    rows = [("grid.active_power", (10 - d) * day_ms, float(d)) for d in range(5)]
    rows.append(("grid.comm_ok", 5 * day_ms, True))
    assert archive.write(rows) == 6
    assert archive.write(rows[:1]) == 0  # the same sample twice is stored once
    assert archive.prune(now_s) == 3  # 3, 4 days old; and the 5-day-old comm_ok
    kept = archive.read_raw("grid.active_power", 0.0, now_s + 1)
    assert [s.value for s in kept] == [2.0, 1.0, 0.0]
    assert archive.read_raw("grid.comm_ok", 0.0, now_s + 1) == []
    archive.close()


async def test_an_unusable_data_dir_degrades_the_archive_instead_of_stopping_the_faces(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the data directory should be")
    remote = simdata.site_config(
        blocker,
        site_id="degraded",
        influx_url="http://127.0.0.1:9",
        token_file=tmp_path / "token",
    )
    face = ArchiveFace(simdata.context(remote))
    await face.start()  # spool cannot be created: kept in memory, data still sent
    try:
        assert face.stats().backend == "influxdb"
        assert not face.stats().spool_durable
    finally:
        await face.stop()
    local = simdata.site_config(blocker, site_id="degraded")
    face = ArchiveFace(simdata.context(local))
    await face.start()  # no local archive possible: reported, nothing archived
    try:
        assert face.stats().backend == "off"
        assert not face.has_history
    finally:
        await face.stop()
