"""The two profiles' laws: spec (P 0.1, integral = previous x decay) and balancing."""

from __future__ import annotations

import pytest

from appliance.control.laws import BalancingLaw, LawInput, SpecLaw, make_law
from appliance.control.params import ControlParams


def law_input(now_s: float, grid_w: float, measured_w: float, *, new: bool = True) -> LawInput:
    return LawInput(
        now_s=now_s,
        dt_s=0.5,
        grid_w=grid_w,
        sample_new=new,
        measured_w=measured_w,
        target_w=0.0,
        low_w=-10000.0,
        high_w=10000.0,
    )


def test_spec_law_decays_only_on_multi_device_sites() -> None:
    params = ControlParams(profile="spec", sync_factor=0.998)
    single = SpecLaw(params, multi_device=False)
    multi = SpecLaw(params, multi_device=True)
    single.reset(1000.0)
    multi.reset(1000.0)
    # Single device: u = 0.1 * 200 + 1.0 * 1000.
    assert single.update(law_input(0.0, 200.0, 0.0)).output == pytest.approx(1020.0)
    # Multi-device: the integral x 0.995 x the synchronisation factor 0.998.
    assert multi.update(law_input(0.0, 200.0, 0.0)).output == pytest.approx(
        20.0 + 1000.0 * 0.995 * 0.998
    )
    assert isinstance(make_law(params, 2), SpecLaw)
    assert isinstance(make_law(ControlParams(), 1), BalancingLaw)


def test_balancing_law_acts_only_on_fresh_samples() -> None:
    law = BalancingLaw(ControlParams())
    law.observe(0.0, 1000.0)
    terms = law.update(law_input(0.0, 500.0, 1000.0))
    assert terms is not None
    assert terms.output == pytest.approx(1500.0)  # measured 1000 + grid 500 (outside the trim band)
    law.observe(0.5, 1500.0)
    assert law.update(law_input(0.5, 480.0, 1500.0, new=False)) is None  # no new sample: hold


def test_a_repeated_value_within_the_meter_window_is_a_held_register() -> None:
    law = BalancingLaw(ControlParams(meter_window_s=1.0))
    # (time, grid W, inverter W, expected output or None = hold)
    table = [
        (0.0, 600.0, 1000.0, 1600.0),
        # The meter refreshes every 1 s; the 0.5 s poll returns the same value: hold.
        (0.5, 600.0, 1400.0, None),
        # New value; inverter power averaged over the meter's 1 s: (1400 + 1600) / 2 + 200.
        (1.0, 200.0, 1600.0, 1700.0),
        # Same value half a window later: held again.
        (1.5, 200.0, 1700.0, None),
        # Same value a whole window after the last fresh one: a genuine reading of an
        # unchanged grid, it counts: (1700 + 1700) / 2 + 200.
        (2.0, 200.0, 1700.0, 1900.0),
    ]
    for now, grid, measured, expected in table:
        law.observe(now, measured)
        terms = law.update(law_input(now, grid, measured))
        if expected is None:
            assert terms is None
        else:
            assert terms is not None
            # Errors of 600 and 200 W are outside the trim's 100 W band: no integral part.
            assert terms.output == pytest.approx(expected)
            assert terms.feedforward == pytest.approx(expected - grid)


def test_balancing_trim_integrates_small_errors_only() -> None:
    law = BalancingLaw(ControlParams())  # ki 0.2/s within +-100 W
    for k, grid in enumerate((-60.0, -60.0)):
        law.observe(k * 0.5, 2000.0)
        law.update(law_input(k * 0.5, grid + k * 1e-3, 2000.0))
    # 2 cycles x 0.2 x -60 W x 0.5 s = -12 W of trim (e.g. an inverter reading 3 % high).
    assert law.pid.integral == pytest.approx(-12.0, abs=0.01)
    law.observe(1.0, 2000.0)
    law.update(law_input(1.0, 700.0, 2000.0))
    assert law.pid.integral == pytest.approx(-12.0, abs=0.01)  # 700 W: outside the band
