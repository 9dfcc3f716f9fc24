"""The PID utility: explicit time step, limits, saturation flag, anti-windup unwind, reset."""

from __future__ import annotations

import pytest

from appliance.control.pid import IntegralForm, Pid, PidGains

DT = 0.5  # the appliance's cycle


def test_anti_windup_stops_integrating_and_unwinds_while_saturated() -> None:
    # kp 0.5, ki 1.0/s, output limits +-1000 W, anti-windup 0.02 per cycle.
    pid = Pid(PidGains(kp=0.5, ki_per_s=1.0, anti_windup=0.02))
    # (error W, expected integral W, expected output W, saturated)
    table = [
        # p = 200, integral 0 + 1.0 * 400 * 0.5 = 200, output 400: inside the limits.
        (400.0, 200.0, 400.0, False),
        # p = 1000, the candidate 200 + 1000 = 1200 would push further into the limit:
        # not integrated, and unwound: 200 * 0.98 = 196. Output clamped to 1000.
        (2000.0, 196.0, 1000.0, True),
        # Still saturated: 196 * 0.98 = 192.08.
        (2000.0, 192.08, 1000.0, True),
        # The load drops: p = -100, integral 192.08 - 200 * 0.5 = 92.08, output -7.92 (at once
        # out of the limit; a wound-up integral of 2100 would have held it at 1000).
        (-200.0, 92.08, -7.92, False),
    ]
    for error, integral, output, saturated in table:
        terms = pid.step(error, DT, low=-1000.0, high=1000.0)
        assert pid.integral == pytest.approx(integral)
        assert terms.output == pytest.approx(output)
        assert terms.saturated is saturated
        assert pid.saturated is saturated


def test_integration_continues_when_the_error_pulls_out_of_saturation() -> None:
    pid = Pid(PidGains(kp=0.0, ki_per_s=1.0))
    pid.reset(integral=1500.0)
    # Above the 1000 W limit, but the error (-100) drives the output back down: integrate.
    terms = pid.step(-100.0, DT, low=-1000.0, high=1000.0)
    assert pid.integral == pytest.approx(1450.0)  # 1500 - 1.0 * 100 * 0.5
    assert terms.output == 1000.0
    assert terms.saturated


def test_unwind_decays_the_integral_by_the_anti_windup_constant_per_cycle() -> None:
    pid = Pid(PidGains(kp=0.5, ki_per_s=1.0, anti_windup=0.02))
    pid.reset(integral=200.0)
    expected = [196.0, 192.08, 188.2384]  # x 0.98 per cycle while the meter reading is missing
    for value in expected:
        pid.unwind()
        assert pid.integral == pytest.approx(value)


def test_previous_output_form_is_the_specifications_local_law() -> None:
    # u[k] = 0.1 * e[k] + 0.995 * u[k-1]
    pid = Pid(PidGains(kp=0.1, integral_decay=0.995, form=IntegralForm.PREVIOUS_OUTPUT))
    table = [
        (1000.0, 100.0, 0.0, 100.0),  # p 100, i 0.995 * 0
        (900.0, 90.0, 99.5, 189.5),  # p 90, i 0.995 * 100
        (810.5, 81.05, 188.5525, 269.6025),  # p 81.05, i 0.995 * 189.5
    ]
    for error, p, i, output in table:
        terms = pid.step(error, DT, low=-5000.0, high=5000.0)
        assert (terms.p, terms.i, terms.output) == pytest.approx((p, i, output))


def test_previous_output_form_unwinds_its_memory_while_saturated() -> None:
    pid = Pid(PidGains(kp=0.1, integral_decay=0.995, form=IntegralForm.PREVIOUS_OUTPUT))
    pid.reset(integral=300.0)
    # p 100 + i 298.5 = 398.5 > 200: clamped, saturated; memory 200 * 0.98 = 196.
    terms = pid.step(1000.0, DT, low=-5000.0, high=200.0)
    assert (terms.output, terms.saturated) == (200.0, True)
    assert pid.integral == pytest.approx(196.0)
    # p 80 + i 0.995 * 196 = 195.02 -> 275.02, still clamped; memory 196 again.
    terms = pid.step(800.0, DT, low=-5000.0, high=200.0)
    assert terms.i == pytest.approx(195.02)
    assert pid.integral == pytest.approx(196.0)


def test_the_specification_law_leaves_a_permanent_offset_of_4_8_percent() -> None:
    """With the decay, steady state needs e = u * (1 - 0.995) / 0.1 = 5 % of u."""
    pid = Pid(PidGains(kp=0.1, integral_decay=0.995, form=IntegralForm.PREVIOUS_OUTPUT))
    net_load = 2500.0
    output = 0.0
    for _ in range(2000):  # a plant that applies the output at once: grid = net - u
        output = pid.step(net_load - output, DT, low=-5000.0, high=5000.0).output
    # Residual import 2500 * 0.05 / 1.05 = 119.05 W: the spec profile never reaches 0 W.
    assert net_load - output == pytest.approx(119.05, abs=0.01)


def test_derivative_uses_the_rate_given_or_the_error_difference() -> None:
    pid = Pid(PidGains(kp=0.0, kd_s=0.2))
    # From the store's history: 500 W/s * 0.2 s = 100 W.
    assert pid.step(100.0, DT, low=-1e6, high=1e6, rate_per_s=500.0).d == pytest.approx(100.0)
    # Without a rate: (300 - 100) / 0.5 s = 400 W/s -> 80 W.
    assert pid.step(300.0, DT, low=-1e6, high=1e6).d == pytest.approx(80.0)
    pid.reset()
    assert pid.step(300.0, DT, low=-1e6, high=1e6).d == 0.0  # no history after a reset


def test_reset_is_bumpless_and_feedforward_adds_to_the_output() -> None:
    pid = Pid(PidGains(kp=1.0, ki_per_s=0.2))
    pid.reset(integral=1500.0)
    assert pid.step(0.0, DT, low=-5000.0, high=5000.0).output == 1500.0
    terms = pid.step(40.0, DT, low=-5000.0, high=5000.0, feedforward=2000.0)
    # 2000 (feed-forward) + 40 (p) + 1500 + 0.2 * 40 * 0.5 (i)
    assert terms.output == pytest.approx(3544.0)
    assert terms.feedforward == 2000.0


def test_integral_band_keeps_large_errors_out_of_the_integral() -> None:
    pid = Pid(PidGains(kp=0.0, ki_per_s=1.0, integral_band=100.0))
    pid.step(150.0, DT, low=-1e6, high=1e6)
    assert pid.integral == 0.0  # 150 W is outside the 100 W band
    pid.step(80.0, DT, low=-1e6, high=1e6)
    assert pid.integral == pytest.approx(40.0)  # 1.0 * 80 * 0.5


@pytest.mark.parametrize(
    ("dt", "low", "high"), [(0.0, -1.0, 1.0), (-0.5, -1.0, 1.0), (0.5, 1.0, -1.0)]
)
def test_bad_time_step_or_limits_are_refused(dt: float, low: float, high: float) -> None:
    with pytest.raises(ValueError, match=r"must be positive|is above"):
        Pid(PidGains(kp=1.0)).step(1.0, dt, low=low, high=high)
