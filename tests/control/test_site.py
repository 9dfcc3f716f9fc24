"""The site controller facade: states in action, heartbeat, commands, published points."""

from __future__ import annotations

import logging

import pytest

from appliance.config import simulated_site_config
from appliance.config.schema import ControlConfig
from appliance.control.command_types import CommandRequest, RejectCode
from appliance.control.interface import Rejected, to_event
from appliance.control.modes import Mode, State
from appliance.control.site import SiteController
from appliance.control.site_io import NodeInputs
from appliance.points.table import shipped_point_table
from tests.control.support import controller, current_state, following, inputs, node, send

STOPPED = ControlConfig(initial_mode="stop")


def running(mode: int, *, nodes: int = 1) -> tuple[SiteController, float]:
    """A controller stopped at start, then put into `mode` by a remote command."""
    ctrl = controller(nodes, config=STOPPED)
    ctrl.step(inputs(0.0, 0.0, tuple(node(n + 1) for n in range(nodes))))
    assert send(ctrl, "set_mode", mode, 0.0).accepted
    return ctrl, 0.0


def test_heartbeat_timeout_in_a_remote_mode_goes_to_stop_with_an_alarm() -> None:
    ctrl = controller(1, config=STOPPED)
    ctrl.step(inputs(0.0, 0.0))
    assert send(ctrl, "set_mode", 2, 0.0).accepted  # the command itself is a control signal
    assert send(ctrl, "heartbeat", 1, 5.0).accepted
    assert send(ctrl, "heartbeat", 2, 15.0).accepted
    # (time s, state, heartbeat.ok, alarm): the last signal was at 15 s, the timeout is 20 s.
    table = [
        (0.5, State.MAXSELF, True, False),
        (35.0, State.MAXSELF, True, False),  # 20.0 s: not more than the timeout
        (35.5, State.STOP, False, True),  # 20.5 s: stop, alarm, mode back to stop
        (60.0, State.STOP, False, True),  # and it stays stopped
    ]
    for now, state, ok, alarm in table:
        out = ctrl.step(inputs(now, 100.0 + now))
        assert current_state(ctrl) is state
        assert out.point_values["heartbeat.ok"] is ok
        assert out.point_values["alarms.heartbeat_lost"] is alarm
    assert out.point_values["controller.mode"] == 0
    assert out.node_setpoints_w == (0.0,)
    assert send(ctrl, "reset_alarms", True, 61.0).accepted
    assert ctrl.step(inputs(61.5, 0.0)).point_values["alarms.heartbeat_lost"] is False


def test_the_runtimes_heartbeat_age_counts_too() -> None:
    ctrl = controller(1, config=STOPPED)
    ctrl.step(inputs(0.0, 0.0))
    assert send(ctrl, "set_mode", 2, 0.0).accepted
    ctrl.step(inputs(25.0, 10.0, heartbeat_age_s=3.0))
    assert current_state(ctrl) is State.MAXSELF
    ctrl.step(inputs(25.5, 20.0, heartbeat_age_s=21.0))
    assert current_state(ctrl) is State.STOP


def test_the_configured_initial_mode_runs_without_heartbeat() -> None:
    ctrl = controller(1)  # initial_mode maxself from the configuration: local, no SCADA needed
    for k in range(100):
        ctrl.step(inputs(k * 1.0, 50.0 + k))
    assert current_state(ctrl) is State.MAXSELF


def test_a_heartbeat_must_change_its_counter() -> None:
    ctrl = controller(1)
    assert send(ctrl, "heartbeat", 7, 0.0).accepted
    repeated = send(ctrl, "heartbeat", 7, 1.0)
    assert (repeated.accepted, repeated.code) == (False, RejectCode.INVALID_VALUE)
    assert send(ctrl, "heartbeat", 8, 2.0).accepted
    assert ctrl.heartbeat.age(3.0) == 1.0


def test_chargeonly_never_discharges_but_still_balances() -> None:
    ctrl, _ = running(3)
    assert ctrl.step(inputs(0.5, 1200.0)).node_setpoints_w == (0.0,)  # import: would discharge
    out = ctrl.step(inputs(1.0, -900.0))  # export: charge 900 W
    assert out.node_setpoints_w == (-900.0,)
    assert current_state(ctrl) is State.CHARGEONLY


def test_activate_and_stop_hold_zero() -> None:
    ctrl, _ = running(1)
    assert ctrl.step(inputs(0.5, 3000.0)).node_setpoints_w == (0.0,)
    assert current_state(ctrl) is State.ACTIVATE
    assert send(ctrl, "set_mode", 0, 1.0).accepted
    assert current_state(ctrl) is State.STOP
    assert ctrl.step(inputs(1.5, 3000.0)).node_setpoints_w == (0.0,)


def test_setpoint_mode_follows_scada_with_grid_code_ramps_when_enabled() -> None:
    ctrl = controller(1, config=STOPPED, grid_code_ramps=True)
    ctrl.step(inputs(0.0, 0.0))
    assert send(ctrl, "set_active_power", 1000.0, 0.0).accepted
    assert send(ctrl, "set_mode", 4, 0.0).accepted
    step_w = 0.00167 * 5000.0  # ramp per cycle x the site maximum = 8.35 W
    nodes: tuple[NodeInputs, ...] = (node(),)
    for k in range(1, 4):
        out = ctrl.step(inputs(0.5 * k, 0.0, nodes))
        assert out.node_setpoints_w == pytest.approx((k * step_w,))
        nodes = following(nodes, out.node_setpoints_w)
    # Entering maxself turns the ramps off: the next command is not rate limited.
    assert send(ctrl, "set_mode", 2, 2.0).accepted
    assert ctrl.ramps_enabled is False
    out = ctrl.step(inputs(2.5, 2000.0, (node(power_w=25.0),)))
    assert out.node_setpoints_w == (2025.0,)  # measured 25 + grid 2000


def test_setpoint_mode_without_ramps_applies_the_setpoint_at_once() -> None:
    ctrl = controller(1, config=STOPPED)
    ctrl.step(inputs(0.0, 0.0))
    assert send(ctrl, "set_active_power", -2500.0, 0.0).accepted
    assert send(ctrl, "set_mode", 4, 0.0).accepted
    assert ctrl.step(inputs(0.5, 0.0)).node_setpoints_w == (-2500.0,)


def test_off_grid_goes_to_backup_and_returns_after_the_grid_is_stable() -> None:
    ctrl = controller(1)
    # (time, lowest phase V, state): off grid below 230 V - 40 % = 138 V; back when all phases
    # are at or above 0.9 x 230 = 207 V for 10 s.
    table = [
        (0.0, 230.0, State.MAXSELF),
        (0.5, 130.0, State.BACKUP),
        (1.0, 230.0, State.BACKUP),  # the 10 s start now
        (6.0, 200.0, State.BACKUP),  # a dip below 207 V restarts them
        (6.5, 230.0, State.BACKUP),
        (16.0, 230.0, State.BACKUP),  # 9.5 s
        (16.5, 230.0, State.MAXSELF),  # 10 s: grid back -> stop -> the requested maxself
    ]
    for now, volts, state in table:
        out = ctrl.step(inputs(now, 1000.0 + now, volts=(230.0, volts, 230.0)))
        assert current_state(ctrl) is state
        if state is State.BACKUP:
            assert out.node_setpoints_w == (0.0,)
            assert out.point_values["alarms.off_grid"] is True
            assert out.point_values["controller.state"] == 12


def test_critical_error_trips_to_fault_latched_until_reset_with_the_cause_gone() -> None:
    ctrl = controller(1)
    ctrl.step(inputs(0.0, 500.0))
    out = ctrl.step(inputs(0.5, 500.0, (node(bms_alarm=True),)))
    assert current_state(ctrl) is State.FAULT
    assert out.node_setpoints_w == (0.0,)
    assert out.point_values["controller.mode"] == 0  # fault's entry: mode back to stop
    refused = send(ctrl, "set_mode", 2, 1.0)
    assert (refused.accepted, refused.code) == (False, RejectCode.INVALID_STATE)
    refused = send(ctrl, "reset_alarms", True, 1.0)
    assert not refused.accepted
    assert "BMS protection alarm on node 1" in refused.reason
    ctrl.step(inputs(1.5, 500.0, (node(),)))
    assert current_state(ctrl) is State.FAULT  # cause gone, but latched until reset
    assert send(ctrl, "reset_alarms", True, 2.0).accepted
    assert current_state(ctrl) is State.STOP
    ctrl.step(inputs(2.5, 500.0))
    assert current_state(ctrl) is State.STOP  # an operator must ask for a mode again


def test_over_temperature_is_a_critical_error() -> None:
    ctrl = controller(1)
    out = ctrl.step(inputs(0.0, 500.0, (node(temperature_c=46.0),)))  # max 45 degrees C
    assert current_state(ctrl) is State.FAULT
    assert int(out.point_values["alarms.active"]) & (1 << 6)


def test_losing_every_inverter_stops_and_the_mode_resumes_when_they_return() -> None:
    ctrl = controller(2)
    ctrl.step(inputs(0.0, 500.0, (node(1), node(2))))
    ctrl.step(inputs(0.5, 500.0, (node(1, online=False, power_w=None), node(2, online=False))))
    assert current_state(ctrl) is State.STOP
    refused = send(ctrl, "set_mode", 3, 0.6)
    assert refused.reason == "cannot enter chargeonly: no inverter is active"
    ctrl.step(inputs(1.0, 400.0, (node(1), node(2, online=False))))
    assert current_state(ctrl) is State.MAXSELF


def test_unknown_inverter_power_counts_with_its_last_command() -> None:
    ctrl = controller(1)
    out = ctrl.step(inputs(0.0, 800.0, (node(power_w=0.0),)))
    out = ctrl.step(inputs(0.5, 300.0, (node(power_w=None),)))
    assert out.node_setpoints_w == (1100.0,)  # last command 800 + grid 300
    assert int(out.point_values["alarms.active"]) & (1 << 2)  # inverter lost


@pytest.mark.parametrize(
    ("command", "point", "value", "code", "reason"),
    [
        ("set_mode", "controller.mode", None, RejectCode.INVALID_VALUE, "a value is required"),
        ("set_mode", "controller.mode", True, RejectCode.INVALID_VALUE, "not a finite number"),
        ("set_mode", "controller.mode", 2.5, RejectCode.INVALID_VALUE, "not a whole number"),
        ("set_mode", "controller.mode", 7, RejectCode.OUT_OF_RANGE, "mode 7 is unknown"),
        (
            "set_grid_target",
            "controller.grid_target",
            float("nan"),
            RejectCode.INVALID_VALUE,
            "not a finite",
        ),
        ("set_grid_target", "controller.grid_target", 2e6, RejectCode.OUT_OF_RANGE, "out of range"),
        ("set_reserve_soc", "controller.reserve_soc", 120.0, RejectCode.OUT_OF_RANGE, "0 .. 100"),
        ("heartbeat", "heartbeat.counter", 65535, RejectCode.OUT_OF_RANGE, "0 .. 65534"),
        ("reset_alarms", "alarms.reset", False, RejectCode.INVALID_VALUE, "write 1"),
        ("set_surplus_load", "surplus.x.mode", 0, RejectCode.INVALID_VALUE, "surplus.<n>.mode"),
        ("set_surplus_load", "surplus.1.mode", 5, RejectCode.OUT_OF_RANGE, "unknown"),
        ("set_active_power", None, 2e7, RejectCode.OUT_OF_RANGE, "out of range"),
        ("launch", None, 1, RejectCode.INVALID_VALUE, "unknown command"),
    ],
)
def test_command_payloads_are_checked(
    command: str, point: str | None, value: object, code: RejectCode, reason: str
) -> None:
    request = CommandRequest(9, "modbus:10.0.0.5", command, point, value)  # type: ignore[arg-type]
    with pytest.raises(Rejected) as refused:
        to_event(request)
    assert refused.value.code is code
    assert reason in refused.value.reason
    result = controller(1).command(request, 0.0)
    assert (result.accepted, result.code, result.request_id) == (False, code, 9)


def test_state_rules_for_mode_requests() -> None:
    ctrl = controller(1, config=STOPPED)
    ctrl.step(inputs(0.0, None))  # no grid reading yet
    refused = send(ctrl, "set_mode", 4, 0.1)
    assert refused.reason == "mode setpoint needs an active power setpoint first"
    refused = send(ctrl, "set_mode", 2, 0.2)
    assert refused.reason == "cannot enter maxself: the grid meter reading is missing"
    assert refused.code is RejectCode.INVALID_STATE
    assert send(ctrl, "set_mode", 1, 0.3).accepted  # activate needs no meter
    assert send(ctrl, "set_mode", 1, 0.4).reason == "activate"  # again: nothing to do


def test_stop_is_recorded_during_an_override_and_applies_after_it() -> None:
    ctrl = controller(1)
    ctrl.step(inputs(0.0, 100.0, (node(cell_v=3.0),)))
    assert current_state(ctrl) is State.EMERGENCY_RECHARGE
    result = send(ctrl, "set_mode", 0, 0.1)
    assert result.accepted
    assert "continues until its cause is gone" in result.reason
    ctrl.step(inputs(0.5, 100.0, (node(cell_v=3.25),)))
    assert current_state(ctrl) is State.STOP  # not back to maxself: stop was requested meanwhile


def test_sensor_loss_accepts_switching_between_grid_modes() -> None:
    ctrl, _ = running(2)
    ctrl.step(inputs(0.5, None))
    assert current_state(ctrl) is State.SENSOR_LOSS
    assert send(ctrl, "set_mode", 3, 0.6).accepted  # recorded; applies when the reading returns
    ctrl.step(inputs(1.0, -300.0, heartbeat_age_s=1.0))
    assert current_state(ctrl) is State.CHARGEONLY


def test_grid_target_and_surplus_load_commands() -> None:
    ctrl = controller(1)
    assert send(ctrl, "set_grid_target", -200.0, 0.0, "controller.grid_target").accepted
    out = ctrl.step(inputs(0.0, 300.0))
    assert out.node_setpoints_w == (500.0,)  # 0 measured + (300 - (-200))
    assert out.point_values["controller.grid_target"] == -200.0
    assert out.point_values["controller.error"] == 500.0
    refused = send(ctrl, "set_surplus_load", 0, 0.5, "surplus.3.mode")
    assert (refused.code, refused.reason) == (RejectCode.NOT_WRITABLE, "there is no surplus load 3")


def test_every_command_is_logged_with_its_source(caplog: pytest.LogCaptureFixture) -> None:
    ctrl = controller(1)
    with caplog.at_level(logging.INFO, logger="appliance.control.site"):
        send(ctrl, "set_reserve_soc", 20.0, 1.0, source="opcua:alice@10.0.0.9")
        send(ctrl, "set_mode", 9, 2.0, source="modbus:10.0.0.7")
    assert [(e.source, e.command, e.accepted) for e in ctrl.command_log] == [
        ("opcua:alice@10.0.0.9", "set_reserve_soc", True),
        ("modbus:10.0.0.7", "set_mode", False),
    ]
    assert "from opcua:alice@10.0.0.9: accepted" in caplog.text
    assert "from modbus:10.0.0.7: rejected out_of_range" in caplog.text


def test_telemetry_is_produced_every_interval() -> None:
    ctrl = controller(2)
    due = []
    for k in range(45):
        out = ctrl.step(
            inputs(
                k * 0.5,
                0.0,
                (node(1, power_w=300.0, soc_pct=40.0), node(2, power_w=200.0, soc_pct=60.0)),
            )
        )
        if out.telemetry is not None:
            due.append(out.telemetry.now_s)
            assert (out.telemetry.active_power_w, out.telemetry.soc_pct) == (500.0, 50.0)
            assert (out.telemetry.mode, out.telemetry.state) == ("maxself", "maxself")
    assert due == [0.0, 10.0, 20.0]


def test_published_points_exist_in_the_point_table() -> None:
    table = shipped_point_table()
    ctrl = controller(2)
    out = ctrl.step(inputs(0.0, 100.0, (node(1), node(2))))
    missing = [pid for pid in out.point_values if pid not in table]
    assert missing == []
    assert out.point_values["controller.state"] == 2
    assert out.point_values["controller.mode"] == int(Mode.MAXSELF)


def test_inputs_must_match_the_configured_nodes() -> None:
    with pytest.raises(ValueError, match="2 nodes in the inputs, 1 configured"):
        controller(1).step(inputs(0.0, 0.0, (node(1), node(2))))
    with pytest.raises(ValueError, match="at least one battery node"):
        controller(0)


def test_built_from_the_simulated_site() -> None:
    ctrl = SiteController.from_site(simulated_site_config())
    assert ctrl.params.profile == "balancing"
    assert ctrl.params.grid_stale_after_s == 2.0  # the grid meter's stale_after_s
    assert len(ctrl.limits) == 2
    assert ctrl.surplus.indexes() == [1]
    assert current_state(ctrl) is State.STOP
    assert ctrl.requested is Mode.STOP  # initial_mode: stop
    out = ctrl.step(inputs(0.0, 500.0, (node(1), node(2))))
    assert out.node_setpoints_w == (0.0, 0.0)
    assert [c.name for c in out.loads] == ["boiler"]
