"""The OPC UA server benchmark, run with --quick --no-write: it serves, counts and reports.

Speed is never asserted here (the full run is `.venv/bin/python -m bench.opcua_server`);
what is asserted is that both servers were fed and measured in every case, that every read
came back Good, that the subscribed clients received notifications, that the browse found
every point, that the verdicts follow from the figures, and that the docs were not written.
"""

from __future__ import annotations

import math

import pytest

from appliance.config import simulated_site_config
from appliance.runtime.site_table import site_point_table
from bench import opcua_server as bench


def test_every_point_changes_every_cycle_and_stays_in_range() -> None:
    table = site_point_table(simulated_site_config())
    points = list(table)
    before = bench.cycle_values(points, 7, 1_795_000_000.0)
    after = bench.cycle_values(points, 8, 1_795_000_000.5)
    assert set(before) == set(after) == set(table.ids())
    unchanged = [pid for pid in before if before[pid] == after[pid]]
    assert unchanged == []
    for point in points:
        value = after[point.id]
        if point.states:
            assert value in point.states, point.id
        elif point.range is not None and not isinstance(value, bool):
            assert point.range[0] <= value <= point.range[1], point.id


@pytest.mark.slow
async def test_quick_run_measures_both_servers_and_writes_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    written: list[str] = []
    monkeypatch.setattr(bench, "write_section", lambda key, body: written.append(key))

    results = await bench.run(["--quick", "--no-write"])

    assert written == []
    points = len(site_point_table(simulated_site_config()))
    assert results.points == points
    for figures in results.both():
        kind = figures.kind
        assert figures.start_s > 0, kind
        assert set(figures.reads) == set(bench.QUICK.read_sizes), kind
        for size, read in figures.reads.items():
            assert read.requests > 0, (kind, size)
            # Good: fed before the window (the face starts Bad_WaitingForInitialData), in range.
            assert read.bad == 0, (kind, size)
            assert len(read.slice_rates) == bench.QUICK.read_slices, (kind, size)
            assert all(rate > 0 for rate in read.slice_rates), (kind, size)
            minimum_s = bench.QUICK.read_slices * bench.QUICK.read_slice_s
            assert read.server.seconds >= minimum_s, (kind, size)
        assert set(figures.subscriptions) == set(bench.QUICK.clients), kind
        for clients, subscribed in figures.subscriptions.items():
            # At least one publication of every point reached every client in the window.
            assert subscribed.notifications >= clients * points, (kind, clients)
            assert subscribed.server.cycles > 0, (kind, clients)
        assert figures.subscriptions[max(bench.QUICK.clients)].server.cpu_s > 0, kind
        by_level, node_by_node = figures.browse
        assert by_level.nodes == node_by_node.nodes >= points, kind
        assert node_by_node.requests == node_by_node.nodes + 1, kind  # Objects + each node
        assert 0 < by_level.requests < node_by_node.requests, kind
    # The face's typed model has more nodes than plain variables: properties and methods.
    assert results.face.browse[0].nodes > results.baseline.browse[0].nodes

    rows = bench.summary_rows(results)
    for row in rows:
        assert math.isfinite(row.ratio), row.figure
        if row.met is not None and row.figure.startswith("Read"):
            assert row.met == (row.face >= bench.GOAL_RATIO * row.baseline), row.figure
    cpu = [r for r in rows if r.figure == f"Server CPU, {bench.GOAL_CLIENTS} clients"]
    assert [r.met for r in cpu] == [cpu[0].face < bench.GOAL_CPU_SHARE * 100]
    assert bench.all_goals_met(results) == all(r.met for r in rows if r.met is not None)

    printed = capsys.readouterr().out
    assert "## OPC UA face against a bare asyncua server" in printed
    assert f"Read, 1000 nodes per request ({points} point ids repeated)" in printed
    for clients in bench.QUICK.clients:
        assert f"| {clients} | face |" in printed
        assert f"| {clients} | baseline |" in printed
