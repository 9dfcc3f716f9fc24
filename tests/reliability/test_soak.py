"""Soak: the simulated site with every face loaded for a bounded time, watched for leaks.

`bench.soak.soak` runs the simulated site, the core (in maxself) and the OPC UA, Modbus,
archive (local) and metrics faces in this process, while a second process keeps 4 OPC UA
clients subscribed to every point at 500 ms, 3 Modbus clients polling the whole map every
500 ms (one of them reconnecting every 10 s and writing the SCADA heartbeat every 2 s) and a
scraper of /metrics every 2 s. Every 5 s it records this process's RSS, asyncio tasks, open
file descriptors (/proc/self/fd) and the control cycle's lateness.

60 s by default (it runs in `make test`); longer with the environment, e.g.
`SOAK_SECONDS=3600 .venv/bin/pytest tests/reliability/test_soak.py`.

The bounds (constants of bench/soak.py, the same goals `bench/soak.py` reports), all against
the same run's figures at the end of the warm-up (20 s: clients subscribed, caches filled):

* RSS grows less than 10 MB after the warm-up: measured +0.9 MB in the 40 s of the default
  run and +2.6 MB in 280 s, slowing down as the local archive's SQLite page cache (2 MB per
  connection) and the allocator settle; a leak of 100 bytes per OPC UA notification would
  add 1.2 MB a minute, so a long run catches it. From 10 minutes on, the second half of the
  run must also grow less than 8 MB/h: what a slow leak keeps doing once caches are full.
* asyncio tasks and file descriptors: a steady load keeps them steady; a scrape, a reconnect
  or an OPC UA publish in flight when a sample is taken accounts for a handful, so at most 6
  above the baseline at any sample and at most 3 at the end.
* the control cycle ran every 500 ms all along. Its lateness and overruns are measured and
  reported, not asserted (speed is never asserted in a test): here the faces share the core's
  event loop (on a site they have their own process) on a shared machine;
  bench/loop_lateness.py measures the appliance as it runs.

The load itself is checked too (clients subscribed, requests answered, heartbeats accepted,
the archive written, the site still in maxself), so that a soak that quietly did nothing
cannot pass.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from bench import soak
from bench.soak import SoakResult

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
MAXSELF_STATE = 2
REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)

pytestmark = pytest.mark.slow


def check_the_load_happened(result: SoakResult) -> None:
    load = result.load
    assert load.opcua_clients == soak.OPCUA_CLIENTS
    assert load.notifications > 0
    assert load.modbus_reads > 0
    assert load.modbus_failures == 0
    assert load.heartbeats > 0
    assert load.scrapes > 0
    assert load.scrape_failures == 0
    assert result.archived > 0
    assert result.archive_failures == 0
    assert result.commands_rejected == 0
    assert result.commands_accepted >= load.heartbeats
    assert result.state_at_end == MAXSELF_STATE  # the heartbeats kept the site in control


@pytest.mark.timeout(SOAK_SECONDS + 240)
async def test_the_site_with_every_face_loaded_holds_memory_tasks_and_fds() -> None:
    result = await soak.soak(SOAK_SECONDS)
    command = f"SOAK_SECONDS={SOAK_SECONDS:g} .venv/bin/pytest tests/reliability/test_soak.py"
    log.info("figure: soak\n%s", soak.report(result, command))

    assert len(result.rows) == round(SOAK_SECONDS / soak.SAMPLE_S)
    check_the_load_happened(result)
    assert result.load.reconnects >= SOAK_SECONDS // soak.RECONNECT_EVERY_S - 2
    base, end = result.baseline, result.end
    assert abs(base.t_s - soak.WARMUP_S) < 1
    after = result.after_warmup
    assert result.rss_growth_mb < soak.RSS_GROWTH_MB, [round(r.rss_mb, 1) for r in result.rows]
    rate = result.rss_late_mb_per_hour
    if rate is not None:  # runs of 10 minutes and more after the warm-up
        assert rate < soak.RSS_LATE_MB_PER_HOUR
    assert max(r.tasks for r in after) - base.tasks <= soak.TASKS_SLACK, [
        r.tasks for r in result.rows
    ]
    assert end.tasks - base.tasks <= soak.TASKS_SLACK // 2
    assert max(r.fds for r in after) - base.fds <= soak.FDS_SLACK, [r.fds for r in result.rows]
    assert end.fds - base.fds <= soak.FDS_SLACK // 2
    assert all(r.cycles >= 8 for r in result.rows)  # 10 per 5 s interval: the cycle ran
    assert len(result.lateness_ms) >= 0.9 * SOAK_SECONDS / 0.5
    # Lateness and overruns are measured and reported (bench/soak.py, the log line above), not
    # asserted: here the site, the core and every face share one loop on a shared CI machine.


def test_the_soak_benchmark_runs_quick_without_writing_the_docs() -> None:
    """`python -m bench.soak --quick --no-write`: a short soak, its figures, no docs touched."""
    docs = REPO / "docs" / "performance.md"
    before = docs.read_bytes() if docs.exists() else None
    result = soak.run(["--quick", "--no-write"])
    assert (docs.read_bytes() if docs.exists() else None) == before
    assert result.seconds == soak.QUICK_SECONDS
    assert len(result.rows) == round(soak.QUICK_SECONDS / soak.QUICK_SAMPLE_S)
    assert abs(result.baseline.t_s - soak.QUICK_WARMUP_S) < 1
    check_the_load_happened(result)
    assert all(r.rss_mb > 0 and r.tasks > 0 and r.fds > 0 for r in result.rows)
    assert sum(r.cycles for r in result.rows) >= 12  # 16 cycles in 8 s
    text = soak.report(result, "quick")
    assert "| goal | bound | measured | met |" in text
    assert text.count("\n| ") >= len(result.rows) + len(result.goals())
