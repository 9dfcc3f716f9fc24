"""The control benchmark's plant and metrics, on one short scenario (the full run is bench/control.py)."""

from __future__ import annotations

import math

import pytest

from bench import control as bench


def test_default_profile_settles_a_2kw_step_on_the_base_plant() -> None:
    result = bench.step_test(bench.DEFAULT_PROFILE, bench.PlantConfig(), 500.0, 2500.0, offset=3)
    assert result.settle_s <= 3.5
    assert result.overshoot_pct <= 5.0
    assert result.offset_w <= 10.0


def test_spec_profile_keeps_its_offset_and_never_settles() -> None:
    result = bench.step_test("spec", bench.PlantConfig(), 500.0, 2500.0, offset=0)
    assert math.isinf(result.settle_s)
    assert 115.0 < result.offset_w < 123.0  # 2500 W x 0.05 / 1.05 = 119 W


def test_oracle_is_the_floor() -> None:
    oracle = bench.step_test("oracle", bench.PlantConfig(), 500.0, 2500.0, offset=3)
    default = bench.step_test(bench.DEFAULT_PROFILE, bench.PlantConfig(), 500.0, 2500.0, offset=3)
    assert oracle.settle_s <= default.settle_s
    assert oracle.event_wh <= default.event_wh


def _report(profile: str, settle_s: float) -> bench.ProfileReport:
    """A made-up report: every step settles in `settle_s` with no overshoot."""
    step = bench.StepResult(settle_s, 0.0, 0.0, 0.5)
    report = bench.ProfileReport(profile)
    report.steps = {
        v.name: {d: [step] * bench.SPC for d in bench.DIRECTIONS} for v in bench.VARIANTS
    }
    report.hours = [bench.HourResult(60.0, 60.0, 2000.0)] * 3
    if profile != "oracle":
        report.dropout = bench.DropoutResult(18, 0, 2.5)
    return report


def test_check_exits_non_zero_when_the_default_profile_misses_a_goal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settle = {"spec": 2.0, "balancing": 2.0, "oracle": 2.0}
    monkeypatch.setattr(bench, "evaluate", lambda profile: _report(profile, settle[profile]))
    assert bench.main(["--check", "--no-write"]) == 0
    settle[bench.DEFAULT_PROFILE] = 3.6  # above the 3.5 s goal
    assert bench.main(["--check", "--no-write"]) == 1
    assert bench.main(["--no-write"]) == 0  # without --check it only reports
    assert "GOAL MISSED" in capsys.readouterr().err
