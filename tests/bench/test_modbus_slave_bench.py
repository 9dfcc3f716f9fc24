"""The Modbus slave benchmark, run with --quick --no-write: it serves, counts and reports.

Speed is never asserted here (the full run is `.venv/bin/python -m bench.modbus_slave`);
what is asserted is that every request was answered without an exception, that both
servers were measured in every scenario, that the face's own counters agree with what the
clients sent, and that the docs were not written.
"""

from __future__ import annotations

import pytest

from bench import modbus_slave as bench

pytestmark = pytest.mark.slow


def test_quick_run_measures_both_servers_and_writes_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    written: list[str] = []
    monkeypatch.setattr(bench, "write_section", lambda key, body: written.append(key))

    result = bench.run(["--quick", "--no-write"])

    assert written == []
    assert len(result.figures) == 2 * len(bench.SCENARIOS)
    for figures in result.figures:
        label = (figures.scenario, figures.server)
        assert figures.errors == 0, label
        assert figures.requests > 0, label
        assert figures.window_s > 0, label
        assert all(latency > 0 for latency in figures.latencies_s), label
        assert figures.server_cpu_s > 0, label
        if figures.scenario.mixed:
            assert 0 < figures.writes_sent < figures.sent, label
        else:
            assert figures.writes_sent == 0, label
        if figures.scenario.rate is not None:
            # Paced: never more than the schedule allows (one request per client of slack).
            allowed = figures.scenario.rate * figures.window_s + figures.scenario.clients
            assert figures.requests <= allowed, label

    # The face counted every request the clients sent it, and every write became a command.
    face = [f for f in result.figures if f.server == "face"]
    assert result.face_requests == sum(f.sent for f in face)
    assert result.face_commands == sum(f.writes_sent for f in face) > 0
    assert result.face_exceptions == 0
    # The workload's addresses come from the face's map.
    first, end = result.targets.span
    assert first <= result.targets.read
    assert result.targets.read + bench.READ_COUNT <= end

    # The verdicts follow from the figures (whatever they are on this machine).
    throughput, latency = bench.goals(result)
    back_to_back = [s for s in bench.SCENARIOS if s.rate is None]
    assert throughput[1] == all(result.ratio(s) >= bench.GOAL_RATIO for s in back_to_back)
    paced = [result.get(s, "face") for s in bench.SCENARIOS if s.rate is not None]
    assert latency[1] == (
        all(f.percentile_ms(0.99) < bench.GOAL_P99_MS for f in paced)
        and all(f.rate >= 0.95 * bench.PACED_RATE for f in paced)
    )
    for _, met, measured, why in (throughput, latency):
        assert measured
        assert bool(why) != met  # a reason exactly when a goal is missed
    assert result.face_read_us > 0
    printed = capsys.readouterr().out
    assert "## Modbus slave throughput and latency" in printed
    for scenario in bench.SCENARIOS:
        assert f"| {scenario.name} | {scenario.clients} | face |" in printed
        assert f"| {scenario.name} | {scenario.clients} | baseline |" in printed
