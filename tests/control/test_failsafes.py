"""Level 1 failsafes, through the site controller: what reaches the inverters."""

from __future__ import annotations

import pytest

from appliance.config.schema import BatteryLimits, ControlConfig
from appliance.control.command_types import RejectCode
from appliance.control.failsafes import SafetyFloor, sensor_loss_ramp
from appliance.control.modes import State
from appliance.control.site_io import NodeInputs, node_power_limits
from tests.control.support import LIMITS, controller, current_state, following, inputs, node, send


def test_sensor_loss_ramps_the_command_by_0_75_per_cycle_to_zero_never_holding() -> None:
    ctrl = controller(1)
    nodes: tuple[NodeInputs, ...] = (node(power_w=0.0),)
    # Balancing: 1000 W import with the inverter at 0 W -> command 0 + 1000 = 1000 W.
    out = ctrl.step(inputs(0.0, 1000.0, nodes))
    assert out.node_setpoints_w == (1000.0,)
    nodes = following(nodes, out.node_setpoints_w)
    out = ctrl.step(inputs(0.5, 0.0, nodes))  # balanced: 1000 + 0
    assert out.node_setpoints_w == (1000.0,)
    # The grid reading is now missing (older than 2 s: the runtime passes None).
    expected = [1000.0 * 0.75**n for n in range(1, 17)]  # 750, 562.5, 421.875, ... 10.02
    expected += [0.0, 0.0]  # 1000 * 0.75**17 = 7.5 W is below the 10 W snap: 0 W, then stays 0
    seen = []
    for k, _ in enumerate(expected):
        out = ctrl.step(inputs(1.0 + 0.5 * k, None, following(nodes, out.node_setpoints_w)))
        seen.append(out.node_setpoints_w[0])
        assert current_state(ctrl) is State.SENSOR_LOSS
        assert out.point_values["alarms.meter_lost"] is True
    assert seen[:3] == [750.0, 562.5, 421.875]
    assert seen == pytest.approx(expected)


def test_sensor_loss_ends_when_the_reading_returns_and_the_loop_restarts_bumpless() -> None:
    ctrl = controller(1)
    out = ctrl.step(inputs(0.0, 2000.0, (node(power_w=0.0),)))
    out = ctrl.step(inputs(0.5, None, (node(power_w=2000.0),)))
    assert out.node_setpoints_w == (1500.0,)
    out = ctrl.step(inputs(1.0, 500.0, (node(power_w=1500.0),)))
    assert current_state(ctrl) is State.MAXSELF
    assert out.node_setpoints_w == (2000.0,)  # measured 1500 + grid 500
    assert out.point_values["alarms.meter_lost"] is False


def test_sensor_loss_unwinds_the_pid_integral_each_cycle() -> None:
    ctrl = controller(1)
    ctrl.step(inputs(0.0, 0.0, (node(power_w=0.0),)))
    ctrl.law.pid.integral = 50.0
    ctrl.step(inputs(0.5, None, (node(),)))
    ctrl.step(inputs(1.0, None, (node(),)))
    assert ctrl.law.pid.integral == pytest.approx(50.0 * 0.98 * 0.98)


def test_safety_floor_overrides_an_external_setpoint_with_a_steady_recharge() -> None:
    ctrl = controller(1, config=ControlConfig(initial_mode="stop"))
    ctrl.step(inputs(0.0, 0.0, (node(),)))
    assert send(ctrl, "set_active_power", 3000.0, 0.0).accepted
    assert send(ctrl, "set_mode", 4, 0.0).accepted
    out = ctrl.step(inputs(0.5, 0.0, (node(),), heartbeat_age_s=0.5))
    assert current_state(ctrl) is State.SETPOINT
    assert out.node_setpoints_w == (3000.0,)
    # (lowest cell V, state, command W): floor = 3.0 V min + 0.05 V margin = 3.05 V, safe 3.2 V.
    table = [
        # At the floor: recharge at 20 % of the 5000 W rating, overriding the +3000 W command.
        (3.04, State.EMERGENCY_RECHARGE, -1000.0),
        # Recovering but below the safe voltage: the latch holds (hysteresis 3.05 .. 3.2 V).
        (3.15, State.EMERGENCY_RECHARGE, -1000.0),
        # All cells at the safe voltage: back to the requested setpoint mode in the same cycle.
        (3.2, State.SETPOINT, 3000.0),
    ]
    for k, (cell_v, state, command) in enumerate(table):
        out = ctrl.step(inputs(1.0 + 0.5 * k, 0.0, (node(cell_v=cell_v),), heartbeat_age_s=0.5))
        assert current_state(ctrl) is state
        assert out.node_setpoints_w == pytest.approx((command,))
        if state is State.EMERGENCY_RECHARGE:
            assert out.point_values["alarms.battery_floor"] is True
            refused = send(ctrl, "set_mode", 2, 1.0)
            assert not refused.accepted
            assert refused.code is RejectCode.INVALID_STATE
            assert "overrides external commands" in refused.reason


def test_safety_floor_blocks_discharge_of_that_node_and_recharges_only_it() -> None:
    ctrl = controller(2)
    nodes = (node(1, cell_v=3.3), node(2, cell_v=3.02))
    out = ctrl.step(inputs(0.0, 2000.0, nodes))
    assert current_state(ctrl) is State.EMERGENCY_RECHARGE
    assert out.node_setpoints_w == (0.0, -1000.0)


def test_safety_floor_latch_with_margin_and_missing_readings() -> None:
    floor = SafetyFloor([LIMITS], margin_v=0.1)  # floor 3.0 + 0.1 = 3.1 V, safe 3.2 V
    assert [floor.update(0, v) for v in (3.3, 3.1, None, 3.19, float("nan"), 3.2)] == [
        False,  # above the floor
        True,  # at the floor: latched
        True,  # no reading: unchanged
        True,  # below the safe voltage: still latched
        True,  # not a number: unchanged
        False,  # safe again
    ]


@pytest.mark.parametrize(
    ("soc", "grid_w", "expected_w"),
    [
        (10.5, 2000.0, 2000.0),  # above the 10 % reserve: discharge allowed
        (10.0, 2000.0, 0.0),  # at the reserve: no discharge
        (8.0, 2000.0, 0.0),  # below: none
        (10.0, -1500.0, -1500.0),  # charging is still allowed at the reserve
        (None, 2000.0, 0.0),  # SoC unknown: treated as depleted
    ],
)
def test_reserve_soc_guard(soc: float | None, grid_w: float, expected_w: float) -> None:
    ctrl = controller(1)
    out = ctrl.step(inputs(0.0, grid_w, (node(soc_pct=soc),)))
    assert out.node_setpoints_w == (expected_w,)


def test_reserve_soc_command_and_node_minimum_take_the_higher() -> None:
    ctrl = controller(
        1, limits=BatteryLimits(max_charge_w=5000, max_discharge_w=5000, min_soc_pct=20)
    )
    # The command asks for 10 %, but the node's own min_soc_pct is 20 %.
    assert ctrl.step(inputs(0.0, 1000.0, (node(soc_pct=19.0),))).node_setpoints_w == (0.0,)
    assert send(ctrl, "set_reserve_soc", 30.0, 0.5).accepted
    assert ctrl.step(inputs(1.0, 1000.0, (node(soc_pct=25.0),))).node_setpoints_w == (0.0,)
    assert ctrl.step(inputs(1.5, 1000.0, (node(soc_pct=31.0),))).node_setpoints_w == (1000.0,)


def test_stale_bms_data_means_no_discharge_but_charging_within_limits() -> None:
    ctrl = controller(1)
    assert ctrl.step(inputs(0.0, 1000.0, (node(bms_fresh=False),))).node_setpoints_w == (0.0,)
    assert ctrl.step(inputs(0.5, -800.0, (node(bms_fresh=False),))).node_setpoints_w == (-800.0,)


def test_full_battery_takes_no_charge() -> None:
    ctrl = controller(1)  # max_soc_pct 95 %
    assert ctrl.step(inputs(0.0, -1000.0, (node(soc_pct=95.0),))).node_setpoints_w == (0.0,)


@pytest.mark.parametrize(
    ("voltage", "charge_a", "discharge_a", "inverter", "expected"),
    [
        (
            52.0,
            50.0,
            100.0,
            None,
            (2600.0, 5000.0),
        ),  # BMS 50 A x 52 V; config 5000 W caps discharge
        (52.0, 50.0, 40.0, 1500.0, (1500.0, 1500.0)),  # the inverter's capability is the least
        (None, 50.0, 100.0, None, (0.0, 0.0)),  # no pack voltage: the BMS allows nothing
        (52.0, None, 100.0, None, (0.0, 5000.0)),  # no charge current limit: no charge
        (52.0, -5.0, 100.0, -10.0, (0.0, 0.0)),  # negative limits count as 0
    ],
)
def test_node_power_limits_respect_the_bms_current_limits(
    voltage: float | None,
    charge_a: float | None,
    discharge_a: float | None,
    inverter: float | None,
    expected: tuple[float, float],
) -> None:
    got = node_power_limits(
        LIMITS,
        pack_voltage_v=voltage,
        charge_current_limit_a=charge_a,
        discharge_current_limit_a=discharge_a,
        inverter_max_charge_w=inverter,
        inverter_max_discharge_w=inverter,
    )
    assert got == expected


def test_node_from_raw_uses_the_limits_and_needs_fresh_bms_to_be_online() -> None:
    built = NodeInputs.from_raw(
        1,
        LIMITS,
        inverter_answering=True,
        bms_fresh=False,
        soc_pct=50.0,
        cell_voltage_min_v=3.3,
        inverter_power_w=0.0,
        pack_voltage_v=52.0,
        charge_current_limit_a=50.0,
        discharge_current_limit_a=50.0,
    )
    assert not built.online
    assert (built.max_charge_w, built.max_discharge_w) == (0.0, 0.0)  # stale BMS: no limits


def test_hardware_ceiling_clamps_the_command_to_node_and_site_limits() -> None:
    ctrl = controller(2, site_max_discharge_w=3000.0)
    out = ctrl.step(inputs(0.0, 8000.0, (node(1, max_w=5000.0), node(2, max_w=1000.0))))
    # Site ceiling 3000 W, split by the nodes' limits 5000 : 1000 within their own limits.
    assert out.node_setpoints_w == pytest.approx((2500.0, 500.0))
    assert out.point_values["controller.saturated"] is True


def test_sensor_loss_ramp_snaps_small_commands_to_zero() -> None:
    assert sensor_loss_ramp((1000.0, -12.0, 0.0), 0.75, 10.0) == (750.0, 0.0, 0.0)


def test_a_held_grid_value_without_new_samples_counts_as_missing_after_2_s() -> None:
    ctrl = controller(1)
    out = ctrl.step(inputs(0.0, 1000.0, (node(power_w=0.0),)))
    assert out.node_setpoints_w == (1000.0,)
    # The runtime keeps passing the last value, but no new sample arrives.
    for now in (0.5, 1.0, 1.5, 2.0):  # up to 2.0 s old: still usable (held, not acted on)
        ctrl.step(inputs(now, 1000.0, (node(power_w=1000.0),), new=False))
        assert current_state(ctrl) is State.MAXSELF
    out = ctrl.step(inputs(2.5, 1000.0, (node(power_w=1000.0),), new=False))  # 2.5 s: missing
    assert current_state(ctrl) is State.SENSOR_LOSS
    assert out.node_setpoints_w == (750.0,)


def test_the_sensor_loss_ramp_stays_within_what_the_node_may_do() -> None:
    ctrl = controller(1)
    ctrl.step(inputs(0.0, 2000.0, (node(power_w=0.0),)))
    out = ctrl.step(inputs(0.5, None, (node(power_w=2000.0),)))
    assert out.node_setpoints_w == (1500.0,)
    # The BMS data goes stale meanwhile: no discharge, so the ramp's 1125 W becomes 0 W.
    out = ctrl.step(inputs(1.0, None, (node(power_w=1500.0, bms_fresh=False),)))
    assert out.node_setpoints_w == (0.0,)
    assert out.violations == ()  # a guard, not a distribution error
