"""The scale benchmark, run with --quick --no-write: it polls, steps, measures and reports.

Speed is never asserted here (the full run is `.venv/bin/python -m bench.scale`); what is
asserted is that each size ran against its simulated site with every device answering,
that the control step ran in maxself, that the appliance's memory was read from a running
`appliance run`, that the figures grow with the site where they must, that the verdicts
follow from the figures, and that the docs were not written.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import scale as bench

pytestmark = pytest.mark.slow


def test_the_generated_site_has_n_nodes_on_distinct_free_ports(tmp_path: Path) -> None:
    config, path = bench.site_config(5, tmp_path)
    assert path.exists()
    nodes = config.devices.battery_nodes
    assert [n.name for n in nodes] == [f"node{i}" for i in range(1, 6)]
    assert config.simulation is not None
    assert config.simulation.battery_nodes == 5
    inverter_ports = {n.inverter.connection.port for n in nodes}
    assert len(inverter_ports) == 5
    bridges = {(n.bms.connection.port, n.bms.connection.channel) for n in nodes}
    assert len({port for port, _ in bridges}) == 1  # one socketcand bridge, a channel per node
    assert len(bridges) == 5
    faces = {config.faces.opcua.port, config.faces.modbus.port, config.faces.metrics.port}
    assert len(faces) == 3
    assert not faces & inverter_ports


def test_quick_run_measures_every_size_and_writes_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    written: list[str] = []
    monkeypatch.setattr(bench, "write_section", lambda key, body: written.append(key))

    run = bench.benchmark(["--quick", "--no-write"])

    assert written == []
    settings = bench.Settings.quick_run()
    assert [r.nodes for r in run.sizes] == list(settings.sizes) == [1, 4]
    one, four = run.sizes
    for r in run.sizes:
        assert r.step.wall.count == r.alone.wall.count == settings.step_cycles, r.nodes
        assert r.step.mode == r.alone.mode == bench.MAXSELF, r.nodes
        assert r.step.cpu.p50 > 0, r.nodes
        assert r.step.feed_samples > 0, r.nodes
        polling = r.polling
        assert polling.cycles == settings.poll_cycles, r.nodes
        assert polling.polls >= polling.pollers > 0, r.nodes
        assert polling.failed == 0, r.nodes
        assert polling.wall.count == polling.cycles, r.nodes
        assert polling.cpu_ms_per_cycle > 0, r.nodes
        memory = r.memory
        assert 0 < memory.core_rss_mb <= memory.core_peak_mb, r.nodes
        assert memory.faces_rss_mb > 0, r.nodes
    # Three nodes more: three more of every per-node point, pollers and fed samples.
    per_node = (four.points - one.points) // 3
    assert per_node > 0
    assert four.points - one.points == 3 * per_node
    assert four.polling.pollers - one.polling.pollers == 3 * 2  # a BMS and an inverter each
    assert four.step.feed_samples > one.step.feed_samples
    assert run.import_floor_mb > 0
    assert run.load[0] >= 0

    # Neither goal's size is part of --quick: both are reported as not measured.
    assert [met for _, met, _ in bench.goals(run)] == [None, None]
    printed = capsys.readouterr().out
    assert "## Scale: 1 to 64 battery nodes" in printed
    assert "| 4 | " in printed
    assert "not measured" in printed


def test_goals_follow_from_the_figures() -> None:
    def size(nodes: int, cpu_p99: float, wall_p99: float, rss: float) -> bench.SizeResult:
        step = bench.StepRun(
            bench.Timing(10, 1.0, wall_p99, wall_p99),
            bench.Timing(10, 1.0, cpu_p99, cpu_p99),
            bench.Timing(10, 0.1, 0.2, 0.3),
            100,
            bench.MAXSELF,
        )
        return bench.SizeResult(
            nodes, 100 * nodes, step, step, bench.Polling(), bench.Memory(core_rss_mb=rss)
        )

    run = bench.ScaleRun(
        [size(1, 0.5, 0.6, 90.0), size(16, 1.0, 2.0, 149.0), size(64, 4.0, 6.0, 120.0)],
        90.0,
        "grid meter (sdm630)",
        (0.0, 0.0),
    )
    assert [met for _, met, _ in bench.goals(run)] == [True, False, True]
    run.sizes[1].memory.core_rss_mb = 151.0
    run.sizes[2].step.cpu = bench.Timing(10, 1.0, 5.5, 6.0)
    assert [met for _, met, _ in bench.goals(run)] == [False, False, False]
    assert "NOT met" in bench.report(run, "cmd")
