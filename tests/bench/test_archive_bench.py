"""The archive throughput benchmark, run with --quick --no-write: it spools, replays, counts.

Speed is never asserted here (the full run is `.venv/bin/python -m bench.archive_throughput`);
what is asserted is that the outage put every archived field of the site into the spool once
per archive period, that the replay emptied the spool into VictoriaMetrics, that the server
took exactly what every stage sent, that the verdicts follow from the figures, and that the
docs were not written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.archive import archive_targets
from appliance.runtime.site_table import site_point_table
from bench import archive_throughput as bench

pytestmark = pytest.mark.slow


def test_quick_run_spools_replays_and_counts(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    written: list[str] = []
    monkeypatch.setattr(bench, "write_section", lambda key, body: written.append(key))

    run = bench.benchmark(["--quick", "--no-write"])

    assert written == []
    outage = run.outage
    settings = bench.Settings.quick_run()
    assert outage.fraction == settings.fraction < 1
    seconds = bench.HOUR_S * settings.fraction
    assert outage.cycles == round(seconds / bench.CYCLE_S)

    # Every archived point once per its period, and the cluster status once per interval.
    config = bench.site_config(tmp_path, "http://127.0.0.1:9")  # the same site; not contacted
    targets = archive_targets(config, site_point_table(config))
    assert len(targets) == run.archived_points
    status_fields = 3 * round(seconds / config.control.telemetry_interval_s)
    expected_fields = sum(round(seconds / t.every_s) for t in targets.values()) + status_fields
    assert outage.fields == expected_fields
    assert sum(outage.batch_lines) == outage.points > 0
    assert len(outage.batch_lines) == outage.batches
    assert max(outage.batch_lines) <= run.batch_size
    assert outage.hour_points == pytest.approx(outage.points / settings.fraction)
    assert outage.replay_s > 0

    names = [s.name for s in run.stages]
    assert len(names) == len(set(names)) == 7
    for stage in run.stages:
        assert stage.points > 0, stage.name
        assert stage.fields > stage.points, stage.name  # lines carry several fields
        assert stage.seconds > 0, stage.name
        if stage.server_lines is not None:
            # VictoriaMetrics took every line and every field value the stage sent.
            assert (stage.server_lines, stage.server_fields) == (stage.points, stage.fields)
    replayed = run.stage("replay: spool -> `Forwarder` -> `InfluxWriter` -> VictoriaMetrics")
    assert (replayed.points, replayed.fields) == (outage.points, outage.fields)
    assert replayed.server_lines is not None
    for name in names[:3]:  # apply, spool in, spool out: no server involved
        assert run.stage(name).server_lines is None
        assert (run.stage(name).points, run.stage(name).fields) == (outage.points, outage.fields)

    # The verdicts follow from the figures (whatever they are on this machine).
    throughput, replay = bench.goals(run)
    writer = run.stage("appliance: `InfluxWriter.write` (influxdb-client, gzip)")
    assert throughput[1] == (min(writer.points_per_s, replayed.points_per_s) >= bench.POINTS_GOAL)
    assert replay[1] == (outage.hour_replay_s <= bench.REPLAY_GOAL_S)
    assert "extrapolated" in replay[2]
    printed = capsys.readouterr().out
    assert "## Archive throughput" in printed
    assert "| baseline: raw HTTP POST (aiohttp, keep-alive) |" in printed
