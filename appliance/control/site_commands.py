"""The state-dependent command rules: a validated local event applied to the site controller.

`interface.to_event` has checked the payload; here each event meets the controller's state:
mode requests go through the state machine (and are refused with the failing condition),
the overriding states (fault, backup, emergency recharge) refuse every mode but stop, the
setpoint mode needs a setpoint, a heartbeat needs a new counter value, and a fault is reset
only once its cause has gone.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from appliance.control.command_types import RejectCode
from appliance.control.interface import (
    AlarmReset,
    GridTargetChange,
    HeartbeatEvent,
    LocalEvent,
    ModeChange,
    Rejected,
    ReserveChange,
    SetpointChange,
    SurplusLoadModeChange,
)
from appliance.control.modes import GRID_STATES, MODE_STATE, OVERRIDE_STATES, Mode, State

if TYPE_CHECKING:
    from appliance.control.site import SiteController


def apply_event(ctrl: SiteController, event: LocalEvent, now_s: float) -> str:
    """Apply `event`; returns what was done, or raises `Rejected`."""
    if isinstance(event, ModeChange):
        return request_mode(ctrl, event.mode, now_s)
    if isinstance(event, HeartbeatEvent):
        return _heartbeat(ctrl, event.counter, now_s)
    if isinstance(event, AlarmReset):
        return _reset_alarms(ctrl)
    if isinstance(event, SurplusLoadModeChange):
        if event.index not in ctrl.surplus.modes:
            raise Rejected(RejectCode.NOT_WRITABLE, f"there is no surplus load {event.index}")
        ctrl.surplus.set_mode(event.index, event.mode)
        return f"surplus load {event.index}: {event.mode.name.lower()}"
    return _set_value(ctrl, event, now_s)


def _set_value(
    ctrl: SiteController, event: SetpointChange | GridTargetChange | ReserveChange, now_s: float
) -> str:
    match event:
        case SetpointChange(power_w=power):
            ctrl.setpoint_w = power
            ctrl.heartbeat.signal(now_s)
            ctrl.machine.conditions = replace(ctrl.machine.conditions, has_setpoint=True)
            return f"active power setpoint {power:g} W"
        case GridTargetChange(target_w=target):
            ctrl.grid_target_w = target
            return f"grid target {target:g} W"
        case ReserveChange(soc_pct=soc):
            ctrl.reserve_soc_pct = soc
            return f"reserve SoC {soc:g} %"


def request_mode(ctrl: SiteController, mode: Mode, now_s: float) -> str:
    state = ctrl.state
    if mode is Mode.STOP:
        # Stop is always accepted: at once in the operating states, recorded during an
        # override (the site goes to stop, not back to the old mode, when it ends).
        ctrl.requested, ctrl.remote = Mode.STOP, False
        if state.within(State.OPERATING):
            ctrl.machine.fire("go_stop")
            return "stop"
        if state is State.STOP:
            return "stop"
        return f"stop recorded; {state.value} continues until its cause is gone"
    if state in OVERRIDE_STATES:
        raise Rejected(RejectCode.INVALID_STATE, f"state {state.value} overrides external commands")
    target = MODE_STATE[mode]
    if mode is Mode.SETPOINT and ctrl.setpoint_w is None:
        raise Rejected(
            RejectCode.INVALID_STATE, "mode setpoint needs an active power setpoint first"
        )
    # While the grid reading is missing, a change between the grid modes is recorded and
    # takes effect when the reading returns.
    if state is not target and not (state is State.SENSOR_LOSS and target in GRID_STATES):
        trigger = f"go_{target.leaf}"
        refusal = ctrl.machine.refusal(trigger)
        if refusal is not None or not ctrl.machine.fire(trigger):
            raise Rejected(RejectCode.INVALID_STATE, f"cannot enter {mode.name.lower()}: {refusal}")
    ctrl.requested, ctrl.remote = mode, True
    ctrl.heartbeat.signal(now_s)
    return mode.name.lower()


def _heartbeat(ctrl: SiteController, counter: int, now_s: float) -> str:
    if counter == ctrl.heartbeat.last_counter:
        raise Rejected(RejectCode.INVALID_VALUE, f"heartbeat counter {counter} did not change")
    ctrl.heartbeat.last_counter = counter
    ctrl.heartbeat.signal(now_s)
    ctrl.heartbeat_ok = True
    return "heartbeat"


def _reset_alarms(ctrl: SiteController) -> str:
    ctrl.heartbeat_alarm = False
    if ctrl.state is State.FAULT:
        if ctrl.critical_reason:
            raise Rejected(RejectCode.INVALID_STATE, f"fault remains: {ctrl.critical_reason}")
        ctrl.machine.fire("reset")
    return "alarms reset"
