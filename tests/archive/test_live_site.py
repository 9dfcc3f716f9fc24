"""The simulated site running in-process (real protocols on 127.0.0.1), its store's changes
fed to the archive and metrics faces every core cycle, as the faces process does.

What this adds to the tests that drive the faces with made-up samples: the samples here are
the real ones (driver types, poll timestamps, qualities), the site file is parsed by the
real loader (archive keys, relative paths), and the archive goes to VictoriaMetrics over the
v2 write API.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import itertools
import socket
import time
from pathlib import Path

import pytest

from appliance.aio import cancel_and_wait
from appliance.archive import STATUS_MEASUREMENT, ArchiveFace
from appliance.config import load_config_text
from appliance.northbound.face import FaceContext
from appliance.northbound.metrics import FacesTelemetry, MetricsFace
from appliance.runtime.core import Core
from appliance.simulation.site import SimulatedSite
from appliance.simulation.site_config import SIMULATED_PORTS
from tests.archive import simdata
from tests.archive.conftest import scrape_text, wait_for
from tests.archive.servers import VictoriaMetrics, wait_until

pytestmark = pytest.mark.slow

RUN_S = 4.0


def site_file_text(tmp_path: Path, influx_url: str) -> str:
    text = (importlib.resources.files("appliance.models") / "sites" / "simulated.yaml").read_text()
    sockets = [socket.socket() for _ in SIMULATED_PORTS]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        for old, s in zip(SIMULATED_PORTS, sockets, strict=True):
            text = text.replace(f"port: {old}", f"port: {s.getsockname()[1]}")
    finally:
        for s in sockets:
            s.close()
    (tmp_path / "influx.token").write_text("site-token\n")
    text = text.replace("data_dir: ./var", f"data_dir: {tmp_path}/var")
    return text.replace(
        "archive:\n",
        "archive:\n"
        f"  influxdb: {{url: '{influx_url}', org: fleet, bucket: live, token_file: influx.token,"
        " batch_size: 50, flush_interval_s: 0.5}\n",
    )


async def test_the_running_site_is_archived_and_exported_with_its_real_samples(
    victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    config = load_config_text(
        site_file_text(tmp_path, victoria.url), str(tmp_path / "site.yaml"), base_dir=tmp_path
    )
    assert config.archive.spool.path == tmp_path / "var" / "spool"  # under data_dir
    site = SimulatedSite(config)
    await site.start()
    core = Core(config)
    await core.open_devices()
    telemetry = FacesTelemetry()
    ctx = FaceContext(config, core.table, {}, telemetry.counting(simdata.no_core))
    archive = ArchiveFace(ctx, retry_initial_s=0.05, retry_max_s=0.3)
    metrics = MetricsFace(ctx, telemetry=telemetry)
    telemetry.watch_archive(archive.stats)
    await archive.start()
    await metrics.start()
    subscription = core.store.subscribe("faces")
    mirror = ctx.mirror
    assert isinstance(mirror, dict)

    def feed_faces() -> None:  # the faces process's apply(), in-process
        changes = subscription.collect()
        mirror.update(changes)
        archive.apply(changes)
        metrics.apply(changes)

    core.cycle_hooks.append(feed_faces)
    tasks = [asyncio.create_task(p.run(), name=f"poll[{p.name}]") for p in core.pollers]
    tasks.append(asyncio.create_task(site.run(), name="plant"))
    tasks.append(asyncio.create_task(core.run_cycles(), name="control.cycle"))
    started = time.time()
    try:
        await asyncio.sleep(RUN_S)
        ended = time.time()
        await archive.sync()
        await wait_for(lambda: archive.stats().spool_batches == 0, 10, "spool drained")
        assert metrics.port is not None
        scraped = await asyncio.to_thread(scrape_text, metrics.port)
    finally:
        assert not await cancel_and_wait(tasks)
        subscription.close()
        await metrics.stop()
        await archive.stop()
        await core.close()
        await site.stop()

    stats = archive.stats()
    assert stats.write_failures == 0
    assert stats.batches_quarantined == 0  # real values fit the field types of the table
    assert stats.points_written > 20

    series: dict[tuple[str, tuple[tuple[str, str], ...]], list[int]] = {}

    def exported() -> bool:
        series.clear()
        for item in victoria.export('{site="simulated"}'):
            labels = dict(item["metric"])
            series[(labels.pop("__name__"), tuple(sorted(labels.items())))] = item["timestamps"]
        return (
            "battery_soc",
            (("device", "node2"), ("node", "2"), ("site", "simulated")),
        ) in series

    wait_until(exported, 10, "live site exported")
    grid = series[("grid_active_power", (("device", "grid_meter"), ("site", "simulated")))]
    assert len(grid) >= RUN_S - 2  # every second (archive_every_s: 1) once the meter answers
    assert all(started * 1000 - 1000 <= t <= ended * 1000 + 1000 for t in grid)
    assert len(set(grid)) == len(grid)
    assert all(b - a >= 500 for a, b in itertools.pairwise(grid))
    assert (f"{STATUS_MEASUREMENT}_mode", (("site", "simulated"),)) in series
    assert (
        "inverter_active_power",
        (("device", "node1"), ("node", "1"), ("site", "simulated")),
    ) in series
    # The same run, seen by the metrics face.
    assert 'appliance_grid_active_power_watts{site="simulated"}' in scraped
    assert 'appliance_device_up{block="grid",device="grid",node="",site="simulated"} 1.0' in scraped
    assert 'appliance_archive_backend_info{backend="influxdb",site="simulated"} 1.0' in scraped
