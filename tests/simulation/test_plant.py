"""Tests of the seeded plant model: balance, determinism, inverter lag, BMS limits, meters, PV."""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import pytest
import yaml

from appliance.simulation.plant import (
    BmsFlag,
    Plant,
    PlantParams,
    PlantState,
    cell_ocv_v,
)

REPO = Path(__file__).resolve().parents[2]


def run(plant: Plant, seconds: float, dt_s: float) -> list[PlantState]:
    return [plant.step(dt_s) for _ in range(round(seconds / dt_s))]


def test_energy_balance_holds_at_every_step_with_random_setpoints() -> None:
    plant = Plant(PlantParams(seed=3, battery_nodes=3, start_hour=10.0))
    rng = random.Random(99)
    previous = plant.state
    for i in range(7200):  # two simulated hours at 1 s
        if i % 10 == 0:
            for node in (1, 2, 3):
                plant.set_inverter_setpoint(node, rng.uniform(-7000.0, 7000.0))
        state = plant.step(1.0)
        battery = sum(n.ac_power_w for n in state.nodes)
        assert state.grid_w == pytest.approx(state.load_w - state.pv_w - battery, abs=1e-6)
        assert sum(state.grid.active_power_w) == pytest.approx(state.grid_w, abs=1e-6)
        assert state.grid.total_active_power_w == state.grid_w
        assert sum(state.pv_meter.active_power_w) == pytest.approx(state.pv_w, abs=1e-6)
        assert state.battery_ac_w == pytest.approx(battery, abs=1e-6)
        # Registers never run backwards and grow only in the direction the meter shows.
        grew_import = state.grid.import_kwh - previous.grid.import_kwh
        grew_export = state.grid.export_kwh - previous.grid.export_kwh
        assert grew_import >= 0.0
        assert grew_export >= 0.0
        assert (grew_import > 0.0) == (state.grid_w > 0.0)
        assert (grew_export > 0.0) == (state.grid_w < 0.0)
        for n in state.nodes:
            assert 0.0 <= n.soc_pct <= 100.0
            assert n.dc_power_w == pytest.approx(n.voltage_v * n.current_a, abs=1e-6)
        previous = state
    # The random setpoints must have driven the site both ways, or the checks above were idle.
    assert state.grid.import_kwh > 0.5
    assert state.grid.export_kwh > 0.5
    assert state.time_s == 7200.0
    assert plant.time_s == 7200.0


def _trajectory(seed: int) -> list[PlantState]:
    plant = Plant(PlantParams(seed=seed, battery_nodes=2))
    rng = random.Random(5)  # the same setpoints for every seed
    states = []
    for _ in range(300):
        plant.set_inverter_setpoint(1, rng.uniform(-4000.0, 4000.0))
        plant.set_inverter_setpoint(2, rng.uniform(-4000.0, 4000.0))
        states.append(plant.step(2.0))
    return states


def test_same_seed_gives_identical_trajectories() -> None:
    assert _trajectory(7) == _trajectory(7)


def test_other_seed_gives_other_weather_load_and_nodes() -> None:
    a, b = _trajectory(7), _trajectory(8)
    assert [s.pv_w for s in a] != [s.pv_w for s in b]
    assert [s.load_w for s in a] != [s.load_w for s in b]
    assert a[0].nodes[0].soc_pct != b[0].nodes[0].soc_pct
    assert a[-1].grid.voltage_v != b[-1].grid.voltage_v


def test_nodes_start_with_a_small_seeded_soc_spread() -> None:
    socs = [node.soc_pct for node in Plant(PlantParams(battery_nodes=8)).state.nodes]
    assert all(57.0 <= soc <= 63.0 for soc in socs)
    assert max(socs) - min(socs) > 0.5


@pytest.mark.parametrize("dt_s", [0.01, 0.1, 0.4])
def test_inverter_reaches_63_percent_after_one_time_constant(dt_s: float) -> None:
    plant = Plant(PlantParams(battery_nodes=1, inverter_time_constant_s=0.8))
    plant.set_inverter_setpoint(1, 2000.0)
    state = run(plant, 0.8, dt_s)[-1]
    assert state.nodes[0].ac_power_w == pytest.approx(2000.0 * (1.0 - math.exp(-1.0)), rel=1e-3)
    assert state.nodes[0].setpoint_w == 2000.0
    state = run(plant, 4.0, dt_s)[-1]  # six time constants in all
    assert state.nodes[0].ac_power_w == pytest.approx(2000.0, rel=0.003)


def test_inverter_clamps_to_its_rating() -> None:
    plant = Plant(PlantParams(battery_nodes=1))
    plant.set_inverter_setpoint(1, 9000.0)
    states = run(plant, 10.0, 0.1)
    assert max(s.nodes[0].ac_power_w for s in states) <= 5000.0
    assert states[-1].nodes[0].ac_power_w == pytest.approx(5000.0, rel=1e-5)
    plant.set_inverter_setpoint(1, -9000.0)
    states = run(plant, 10.0, 0.1)
    assert min(s.nodes[0].ac_power_w for s in states) >= -5000.0
    assert states[-1].nodes[0].ac_power_w == pytest.approx(-5000.0, rel=1e-5)


def test_current_sign_and_conversion_losses() -> None:
    plant = Plant(PlantParams(battery_nodes=2))
    plant.set_inverter_setpoint(1, 3000.0)
    plant.set_inverter_setpoint(2, -3000.0)
    state = run(plant, 10.0, 1.0)[-1]
    discharging, charging = state.nodes
    assert discharging.current_a > 0.0
    assert discharging.dc_power_w > discharging.ac_power_w > 2990.0  # the pack pays the losses
    assert charging.current_a < 0.0
    assert charging.ac_power_w < -2990.0
    assert charging.ac_power_w < charging.dc_power_w < 0.0  # only part reaches the pack
    assert discharging.voltage_v < charging.voltage_v  # sag under load, rise under charge


def test_no_discharge_when_empty_but_charging_allowed() -> None:
    plant = Plant(PlantParams(battery_nodes=1, initial_soc_pct=0.0, initial_soc_spread_pct=0.0))
    assert plant.state.nodes[0].discharge_current_limit_a == 0.0
    plant.set_inverter_setpoint(1, 5000.0)
    for state in run(plant, 30.0, 0.5):
        node = state.nodes[0]
        assert node.ac_power_w == 0.0
        assert node.soc_pct == 0.0
        assert node.max_discharge_w == 0.0
        assert node.alarm_flags & BmsFlag.CELL_UNDERVOLTAGE
    plant.set_inverter_setpoint(1, -2000.0)
    state = run(plant, 60.0, 1.0)[-1]
    assert state.nodes[0].ac_power_w < -1900.0
    assert state.nodes[0].soc_pct > 0.0


def test_no_charge_when_full_but_discharging_allowed() -> None:
    plant = Plant(PlantParams(battery_nodes=1, initial_soc_pct=100.0, initial_soc_spread_pct=0.0))
    plant.set_inverter_setpoint(1, -5000.0)
    for state in run(plant, 30.0, 0.5):
        node = state.nodes[0]
        assert node.ac_power_w == 0.0
        assert node.soc_pct == 100.0
        assert node.charge_current_limit_a == 0.0
        assert node.max_charge_w == 0.0
    plant.set_inverter_setpoint(1, 2000.0)
    state = run(plant, 60.0, 1.0)[-1]
    assert state.nodes[0].ac_power_w > 1900.0
    assert state.nodes[0].soc_pct < 100.0


@pytest.mark.parametrize(("start_soc", "setpoint_w"), [(4.0, 5000.0), (96.0, -5000.0)])
def test_soc_stays_in_range_and_power_stops_at_the_end(start_soc: float, setpoint_w: float) -> None:
    plant = Plant(PlantParams(battery_nodes=1, initial_soc_pct=start_soc, initial_soc_spread_pct=0))
    plant.set_inverter_setpoint(1, setpoint_w)
    states = run(plant, 7200.0, 5.0)  # coarse steps: the energy clamp must still hold
    for before, after in itertools.pairwise(states):
        node = after.nodes[0]
        assert 0.0 <= node.soc_pct <= 100.0
        # The limits a state reports are the limits the next step enforces.
        assert node.ac_power_w <= before.nodes[0].max_discharge_w + 1e-9
        assert node.ac_power_w >= -before.nodes[0].max_charge_w - 1e-9
    assert states[-1].nodes[0].ac_power_w == 0.0
    if setpoint_w > 0:
        # The weakest cell trips the BMS just before the pack reads 0 %.
        assert states[-1].nodes[0].soc_pct < 2.0
        assert states[-1].nodes[0].alarm_flags & BmsFlag.CELL_UNDERVOLTAGE
    else:
        assert states[-1].nodes[0].soc_pct == 100.0
        # Current tapers near full: far below the 120 A rating in the last percent.
        assert min(s.nodes[0].current_a for s in states if s.nodes[0].soc_pct > 99.0) > -15.0


def test_cell_voltage_falls_steeply_near_empty_and_rises_near_full() -> None:
    socs = [i / 2 for i in range(201)]
    volts = [cell_ocv_v(soc) for soc in socs]
    assert all(b > a for a, b in itertools.pairwise(volts))
    flat_slope = (cell_ocv_v(80.0) - cell_ocv_v(20.0)) / 60.0
    assert (cell_ocv_v(10.0) - cell_ocv_v(0.0)) / 10.0 > 10 * flat_slope
    assert (cell_ocv_v(100.0) - cell_ocv_v(95.0)) / 5.0 > 10 * flat_slope
    # And in the plant: a draining node's lowest cell goes through the warning threshold.
    plant = Plant(PlantParams(battery_nodes=1, initial_soc_pct=12.0, initial_soc_spread_pct=0))
    plant.set_inverter_setpoint(1, 4000.0)
    states = run(plant, 1800.0, 5.0)
    at = {round(s.nodes[0].soc_pct): s.nodes[0] for s in states}
    assert at[10].cell_voltage_min_v > 3.0  # under 80 A, about 0.1 V below the rest voltage
    assert min(s.nodes[0].cell_voltage_min_v for s in states) < 2.9
    assert any(s.nodes[0].warning_flags & BmsFlag.CELL_UNDERVOLTAGE for s in states)
    for state in states:
        node = state.nodes[0]
        assert node.cell_voltage_min_v <= node.cell_voltage_max_v


def test_forced_low_cell_blocks_discharge_until_cleared() -> None:
    plant = Plant(PlantParams(battery_nodes=2))
    plant.set_inverter_setpoint(1, 3000.0)
    plant.set_inverter_setpoint(2, 3000.0)
    run(plant, 10.0, 1.0)
    plant.force_cell_voltage_low(1, 2.6)
    tripped = plant.step(1.0)
    assert tripped.nodes[0].cell_voltage_min_v == 2.6
    assert tripped.nodes[0].alarm_flags == BmsFlag.CELL_UNDERVOLTAGE
    assert tripped.nodes[0].discharge_current_limit_a == 0.0
    assert tripped.nodes[1].alarm_flags == 0
    after = plant.step(1.0)
    assert after.nodes[0].ac_power_w == 0.0
    assert after.nodes[1].ac_power_w == pytest.approx(3000.0)
    plant.set_inverter_setpoint(1, -1000.0)  # emergency recharge stays possible
    assert run(plant, 5.0, 1.0)[-1].nodes[0].ac_power_w < -990.0
    plant.clear_faults()
    plant.set_inverter_setpoint(1, 3000.0)
    state = run(plant, 10.0, 1.0)[-1]
    assert state.nodes[0].alarm_flags == 0
    assert state.nodes[0].ac_power_w == pytest.approx(3000.0, rel=1e-4)


def test_temperature_rises_with_current_and_hot_pack_is_derated() -> None:
    plant = Plant(PlantParams(battery_nodes=2))
    start = plant.state.nodes[0].temperature_max_c
    plant.set_inverter_setpoint(1, 5000.0)
    state = run(plant, 1800.0, 5.0)[-1]
    busy, idle = state.nodes
    assert busy.temperature_max_c > start + 3.0
    assert busy.temperature_max_c > idle.temperature_max_c + 3.0
    assert busy.temperature_min_c < busy.temperature_max_c
    plant.set_node_temperature_c(1, 52.0)  # between warning and alarm: derated, still running
    warm = plant.step(1.0).nodes[0]
    assert warm.warning_flags & BmsFlag.OVERTEMPERATURE
    assert not warm.alarm_flags & BmsFlag.OVERTEMPERATURE
    assert 0.0 < warm.discharge_current_limit_a < 120.0
    plant.set_node_temperature_c(1, 60.0)
    hot = plant.step(1.0).nodes[0]
    assert hot.alarm_flags & BmsFlag.OVERTEMPERATURE
    assert hot.charge_current_limit_a == hot.discharge_current_limit_a == 0.0
    assert plant.step(1.0).nodes[0].ac_power_w == 0.0


def test_import_register_integrates_grid_power_and_export_stays_put() -> None:
    night = PlantParams(battery_nodes=1, start_hour=0.0, appliance_events=False)
    plant = Plant(night)
    plant.set_load_offset_w(6000.0)
    states = run(plant, 600.0, 1.0)
    expected_kwh = sum(s.grid_w for s in states) / 3.6e6
    assert all(s.grid_w > 6000.0 for s in states)
    assert states[-1].grid.import_kwh == pytest.approx(expected_kwh, rel=1e-9)
    assert states[-1].grid.export_kwh == 0.0
    assert states[-1].pv_meter.import_kwh == 0.0


def test_voltage_sags_under_import_by_the_grid_impedance() -> None:
    params = PlantParams(battery_nodes=1, start_hour=0.0, appliance_events=False)
    quiet, loaded = Plant(params), Plant(params)
    loaded.set_load_offset_w(9000.0)
    a, b = quiet.step(1.0), loaded.step(1.0)
    for k in range(3):
        drop = params.grid_impedance_ohm * 3000.0 / params.grid_nominal_v
        assert a.grid.voltage_v[k] - b.grid.voltage_v[k] == pytest.approx(drop, rel=1e-9)
        assert b.grid.current_a[k] > 3000.0 / 240.0
        assert b.grid.power_factor[k] > 0.95


def test_meter_readings_stay_plausible() -> None:
    plant = Plant(PlantParams(seed=11, battery_nodes=2))
    plant.set_inverter_setpoint(1, -5000.0)
    for state in run(plant, 3600.0, 2.0):
        assert 49.9 < state.grid.frequency_hz < 50.1
        for k in range(3):
            assert 220.0 < state.grid.voltage_v[k] < 240.0
            assert -1.0 <= state.grid.power_factor[k] <= 1.0
            assert state.grid.current_a[k] >= 0.0
            assert state.pv_meter.voltage_v[k] == state.grid.voltage_v[k]
    assert len({round(s.grid.frequency_hz, 6) for s in run(plant, 60.0, 1.0)}) > 30


def test_pv_is_zero_at_night_and_has_cloud_transients() -> None:
    params = PlantParams(battery_nodes=1, start_hour=0.0, appliance_events=False)
    states = run(Plant(params), 86400.0, 10.0)
    night = [s.pv_w for s in states if not 6.0 < s.time_of_day_h < 20.0]
    day = [s.pv_w for s in states if 12.0 < s.time_of_day_h < 14.0]
    assert night
    assert all(pv == 0.0 for pv in night)
    assert max(day) > 7000.0
    assert max(s.pv_w for s in states) <= params.pv_peak_w

    def drops(pv: list[float]) -> int:
        return sum(1 for a, b in itertools.pairwise(pv) if a > 1000.0 and b < 0.7 * a)

    def rises(pv: list[float]) -> int:
        return sum(1 for a, b in itertools.pairwise(pv) if b > 1000.0 and a < 0.7 * b)

    cloudy = [s.pv_w for s in states]
    assert drops(cloudy) >= 5
    assert rises(cloudy) >= 5
    clear = [
        s.pv_w
        for s in run(Plant(PlantParams(start_hour=0.0, cloud_transients=False)), 86400.0, 60.0)
    ]
    assert drops(clear) == 0


def test_household_load_has_appliance_steps_on_unbalanced_phases() -> None:
    states = run(Plant(PlantParams(battery_nodes=1, start_hour=0.0)), 86400.0, 10.0)
    loads = [s.load_w for s in states]
    steps = [b - a for a, b in itertools.pairwise(loads)]
    assert sum(1 for step in steps if step > 1500.0) >= 5  # switch-ons
    assert sum(1 for step in steps if step < -1500.0) >= 5  # switch-offs
    assert min(loads) > 200.0
    quiet = run(Plant(PlantParams(start_hour=0.0, appliance_events=False)), 3600.0, 10.0)
    assert all(250.0 < s.load_w < 450.0 for s in quiet)
    phases = quiet[-1].grid.active_power_w
    assert max(phases) - min(phases) > 20.0  # the base load is not balanced
    assert all(q > 0.0 for q in quiet[-1].grid.reactive_power_var)


def test_rejects_bad_arguments() -> None:
    plant = Plant(PlantParams(battery_nodes=2))
    with pytest.raises(ValueError, match=r"node must be 1\.\.2"):
        plant.set_inverter_setpoint(3, 100.0)
    with pytest.raises(ValueError, match=r"node must be 1\.\.2"):
        plant.set_inverter_setpoint(0, 100.0)
    with pytest.raises(ValueError, match="finite"):
        plant.set_inverter_setpoint(1, math.nan)
    with pytest.raises(ValueError, match="dt_s"):
        plant.step(0.0)
    with pytest.raises(ValueError, match="battery_nodes"):
        PlantParams(battery_nodes=65)
    with pytest.raises(ValueError, match="battery_nodes"):
        PlantParams(battery_nodes=0)
    with pytest.raises(ValueError, match="initial_soc_pct"):
        PlantParams(initial_soc_pct=101.0)


def test_params_from_mapping_and_default_scenario_file() -> None:
    data = yaml.safe_load((REPO / "models" / "plant" / "default.yaml").read_text(encoding="utf-8"))
    assert PlantParams.from_mapping(data) == PlantParams()
    assert PlantParams.from_mapping({"pv_peak_w": 5000}).pv_peak_w == 5000.0
    with pytest.raises(ValueError, match="unknown plant parameter 'pv_peak'"):
        PlantParams.from_mapping({"pv_peak": 5000})
    with pytest.raises(ValueError, match="'battery_nodes' must be int"):
        PlantParams.from_mapping({"battery_nodes": True})
    with pytest.raises(ValueError, match="'cloud_transients' must be bool"):
        PlantParams.from_mapping({"cloud_transients": "yes"})


def test_switched_load_adds_to_the_house_load_and_keeps_the_balance() -> None:
    plant = Plant(PlantParams(seed=3, cloud_transients=False, appliance_events=False))
    before = plant.step(0.1)
    plant.set_switched_load_w("boiler", 2000.0)
    after = plant.step(0.1)
    assert after.load_w - before.load_w == pytest.approx(2000.0, abs=50.0)
    assert after.grid_w == pytest.approx(after.load_w - after.pv_w - after.battery_ac_w, abs=1e-6)
    plant.set_switched_load_w("boiler", 0.0)
    assert plant.step(0.1).load_w == pytest.approx(before.load_w, abs=50.0)
    with pytest.raises(ValueError, match="switched load"):
        plant.set_switched_load_w("boiler", -1.0)
