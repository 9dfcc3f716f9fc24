"""Surplus loads: staged relays with hysteresis and minimum times, and the PI heater."""

from __future__ import annotations

import pytest

from appliance.config.schema import SurplusLoadConfig, TcpConnection
from appliance.control.params import HeaterParams, RelayParams
from appliance.control.site_io import LoadInputs
from appliance.control.surplus import HeaterLoad, LoadMode, SurplusLoads, surplus_signal
from tests.control.support import controller, inputs, node

CONN = TcpConnection(host="127.0.0.1", port=15040)


def load(
    name: str,
    rated_w: float,
    *,
    kind: str = "relay",
    channels: tuple[int, ...] = (1,),
    priority: int = 10,
    min_on_s: float = 60.0,
    min_off_s: float = 60.0,
) -> SurplusLoadConfig:
    return SurplusLoadConfig(
        name=name,
        kind=kind,  # type: ignore[arg-type]
        connection=CONN,
        channels=channels,
        rated_power_w=rated_w,
        min_on_s=min_on_s,
        min_off_s=min_off_s,
        priority=priority,
    )


def loads(*configs: SurplusLoadConfig, priority: str = "battery") -> SurplusLoads:
    return SurplusLoads(
        configs,
        priority=priority,  # type: ignore[arg-type]
        relay_params=RelayParams(),
        heater_params=HeaterParams(),
    )


def test_relay_switches_with_hysteresis_and_minimum_on_off_times() -> None:
    site = loads(load("boiler", 2000.0))
    # (time s, grid W, relay on): on at >= 2000 + 100 W surplus, off when importing > 100 W,
    # each state kept at least 60 s.
    table = [
        (0.0, -2000.0, False),  # 2000 W surplus: below the 2100 W threshold
        (1.0, -2150.0, True),  # 2150 W: on
        (2.0, -150.0, True),  # the boiler takes 2000 W; 150 W still exported
        (3.0, 300.0, True),  # importing 300 W, but on for 2 s only (min on 60 s)
        (61.0, 300.0, False),  # on for 60 s: off
        (62.0, -2200.0, False),  # surplus again, but off for 1 s only (min off 60 s)
        (121.0, -2200.0, True),  # off for 60 s: on
        (122.0, 50.0, True),  # importing 50 W: inside the hysteresis band, stays on
    ]
    for now, grid, on in table:
        (cmd,) = site.step(now, grid, 0.0)
        assert cmd.relays == (on,)
        assert cmd.active is on
        assert cmd.power_w == (2000.0 if on else 0.0)


def test_stages_switch_one_at_a_time_with_a_settling_pause() -> None:
    site = loads(load("heater3p", 3000.0, channels=(1, 2, 3), min_on_s=0.0, min_off_s=0.0))
    # Three 1000 W stages; 5 s settling time after each action.
    assert site.step(0.0, -3500.0, 0.0)[0].relays == (True, False, False)
    assert site.step(1.0, -2500.0, 0.0)[0].relays == (True, False, False)  # settling
    assert site.step(5.0, -2500.0, 0.0)[0].relays == (True, True, False)
    assert site.step(10.0, -1500.0, 0.0)[0].relays == (True, True, True)
    assert site.step(15.0, 600.0, 0.0)[0].relays == (True, True, False)  # importing: one off
    assert site.step(16.0, 600.0, 0.0)[0].duty_pct == pytest.approx(200.0 / 3.0)


def test_sg_ready_uses_the_state_3_then_4_patterns() -> None:
    site = loads(
        load("heatpump", 2000.0, kind="sg_ready", channels=(1, 2), min_on_s=0.0, min_off_s=0.0)
    )
    assert site.step(0.0, -500.0, 0.0)[0].relays == (False, False)  # SG state 2: normal
    assert site.step(1.0, -1200.0, 0.0)[0].relays == (False, True)  # state 3: recommended
    assert site.step(6.0, -1200.0, 0.0)[0].relays == (True, True)  # state 4: forced on


@pytest.mark.parametrize(
    ("priority", "grid", "battery", "expected"),
    [
        ("battery", 0.0, -3000.0, 0.0),  # the battery charges first: nothing for the loads
        ("loads", 0.0, -3000.0, 3000.0),  # the battery's charging power is the loads' surplus
        ("battery", -500.0, -3000.0, 500.0),  # only what the battery cannot take
        ("battery", 0.0, 1000.0, -1000.0),  # a discharging battery means no surplus
        ("loads", 0.0, 1000.0, -1000.0),
        ("loads", None, 0.0, None),
    ],
)
def test_surplus_signal_by_priority(
    priority: str, grid: float | None, battery: float, expected: float | None
) -> None:
    assert surplus_signal(grid, battery, priority) == expected  # type: ignore[arg-type]


def test_loads_priority_takes_the_surplus_from_a_charging_battery() -> None:
    battery_first = loads(load("boiler", 2000.0))
    loads_first = loads(load("boiler", 2000.0), priority="loads")
    assert battery_first.step(0.0, 0.0, -3000.0)[0].active is False
    assert loads_first.step(0.0, 0.0, -3000.0)[0].active is True


def test_a_higher_priority_load_takes_over_from_a_lower_one() -> None:
    site = loads(
        load("pool", 1000.0, priority=1, min_on_s=0.0, min_off_s=0.0),
        load("boiler", 2000.0, priority=2, min_on_s=0.0, min_off_s=0.0),
    )
    assert [c.active for c in site.step(0.0, -2200.0, 0.0)] == [True, False]  # pool first (1100 W)
    assert [c.active for c in site.step(5.0, -1200.0, 0.0)] == [
        True,
        False,
    ]  # 1200 < 2100 for boiler
    site.set_mode(1, LoadMode.OFF)
    assert [c.active for c in site.step(6.0, -200.0, 0.0)] == [False, False]
    assert [c.active for c in site.step(11.0, -2200.0, 0.0)] == [False, True]  # boiler on
    site.set_mode(1, LoadMode.AUTO)
    # Pool sees 50 W export + the boiler's 2000 W it may displace: 2050 >= 1100: on.
    assert [c.active for c in site.step(16.0, -50.0, 0.0)] == [True, True]
    # Now importing 950 W: the lowest priority (boiler) goes off first.
    assert [c.active for c in site.step(21.0, 950.0, 0.0)] == [True, False]


def test_operator_modes_act_at_once_and_offline_loads_are_off() -> None:
    site = loads(load("boiler", 2000.0))
    site.set_mode(1, LoadMode.ON)
    assert site.step(0.0, 500.0, 0.0)[0].active is True  # forced on, even when importing
    site.set_mode(1, LoadMode.OFF)
    assert site.step(1.0, -5000.0, 0.0)[0].active is False  # forced off within min on time
    site.set_mode(1, LoadMode.ON)
    assert site.step(2.0, 0.0, 0.0, (LoadInputs(1, online=False),))[0].active is False
    with pytest.raises(KeyError):
        site.set_mode(2, LoadMode.ON)


def test_relays_go_off_without_a_power_signal_for_10_s() -> None:
    site = loads(load("boiler", 2000.0, min_on_s=0.0))
    assert site.step(0.0, -2500.0, 0.0)[0].active is True
    assert site.step(9.5, None, 0.0)[0].active is True  # 9.5 s without a reading: hold
    assert site.step(10.0, None, 0.0)[0].active is False


HEATER = load("heater", 2000.0, kind="pwm_heater")


def heater() -> HeaterLoad:
    return HeaterLoad(1, HEATER, HeaterParams())  # Kp 0.5, Tn 20 s, max 60 degrees C


def test_heater_pi_output() -> None:
    h = heater()
    # (time, surplus W, duty %): error = surplus / 2000 W; I += dt * error / 20 s;
    # output = 0.5 * error + I.
    table = [
        (0.0, 1000.0, 25.0),  # e 0.5; first cycle, no dt yet: I 0; 0.5 * 0.5 = 25 %
        (0.5, 500.0, 13.125),  # e 0.25; I 0.5 * 0.25 / 20 = 0.00625; 0.125 + 0.00625
        (1.0, 0.0, 0.625),  # e 0; I stays 0.00625
        (1.5, -400.0, 0.0),  # e -0.2; I 0.00625 - 0.005 = 0.00125; -0.1 + 0.00125 < 0: 0 %
    ]
    for now, surplus, duty in table:
        state = h.step(now, surplus, 40.0, LoadMode.AUTO)
        assert state.duty_pct == pytest.approx(duty)
        assert state.standby_on is True
    assert h.integral == pytest.approx(0.00125)


@pytest.mark.parametrize(
    ("temperature", "duty"),
    [
        (56.0, 100.0),  # up to 4 degrees C below the 60 degrees C maximum: full output
        (57.0, 75.0),  # then 25 % less per degree C
        (58.5, 37.5),
        (60.0, 0.0),
        (61.0, 0.0),
    ],
)
def test_heater_derates_near_its_maximum_temperature(temperature: float, duty: float) -> None:
    assert heater().step(0.0, None, temperature, LoadMode.ON).duty_pct == pytest.approx(duty)


def test_heater_derating_caps_the_pi_output_and_its_integral() -> None:
    h = heater()
    h.step(0.0, 4000.0, 57.0, LoadMode.AUTO)  # e 2.0: 0.5 * 2 = 100 %, capped at 75 %
    assert h.state.duty_pct == pytest.approx(75.0)
    h.step(0.5, 4000.0, 57.0, LoadMode.AUTO)  # I 0.5 * 2 / 20 = 0.05 (below the 0.75 cap)
    assert h.integral == pytest.approx(0.05)


@pytest.mark.parametrize(
    "temperature", [None, -40.0, 130.0]
)  # missing, broken (cold), shorted (hot)
def test_heater_is_off_on_a_broken_or_shorted_sensor(temperature: float | None) -> None:
    state = heater().step(0.0, 2000.0, temperature, LoadMode.ON)
    assert (state.duty_pct, state.standby_on) == (0.0, False)
    assert state.reason == "temperature sensor broken or shorted"


def test_heater_is_off_without_a_power_signal_for_10_s() -> None:
    h = heater()
    assert h.step(0.0, 1000.0, 40.0, LoadMode.AUTO).duty_pct == pytest.approx(25.0)
    assert h.step(9.5, None, 40.0, LoadMode.AUTO).duty_pct == pytest.approx(25.0)  # holds
    state = h.step(10.0, None, 40.0, LoadMode.AUTO)
    assert (state.duty_pct, state.reason) == (0.0, "no power signal")


def test_standby_relay_opens_after_the_configured_time_without_surplus() -> None:
    h = heater()
    assert h.step(0.0, 500.0, 40.0, LoadMode.AUTO).standby_on is True
    assert h.step(599.5, -50.0, 40.0, LoadMode.AUTO).standby_on is True  # 599.5 s < 600 s
    state = h.step(600.0, -50.0, 40.0, LoadMode.AUTO)
    assert (state.standby_on, state.duty_pct) == (False, 0.0)
    assert h.step(600.5, 300.0, 40.0, LoadMode.AUTO).standby_on is True  # surplus again


def test_heater_through_the_site_controller_publishes_its_points() -> None:
    ctrl = controller(1, loads=[HEATER])
    out = ctrl.step(
        inputs(0.0, 0.0, (node(soc_pct=95.0),), loads=(LoadInputs(1, temperature_c=40.0),))
    )
    out = ctrl.step(
        inputs(0.5, -1000.0, (node(soc_pct=95.0),), loads=(LoadInputs(1, temperature_c=40.0),))
    )
    # The battery is full (95 %): the 1000 W export is surplus; e = 0.5, I 0.5 * 0.5 / 20.
    (cmd,) = out.loads
    assert cmd.duty_pct == pytest.approx(25.0 + 1.25)
    assert out.point_values["surplus.1.duty"] == pytest.approx(26.25)
    assert out.point_values["surplus.1.active"] is True
    assert out.point_values["surplus.1.power"] == pytest.approx(525.0)
