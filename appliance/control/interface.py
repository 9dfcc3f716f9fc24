"""The command interface: a request's payload checked and turned into a local event.

`to_event` checks what does not depend on the controller's state: the command is known, its
required parameters are there, with the right type and within range. The site controller
then checks the state-dependent rules (`SiteController.command`). Each refusal carries a
`RejectCode`, which the OPC UA and Modbus faces translate into their own status codes.

Mode requests map to loop configurations (`LOOP_CONFIG`): which law drives the cluster and in
which direction it may act.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from appliance.control.command_types import CommandRequest, CommandResult, RejectCode
from appliance.control.modes import Mode, State
from appliance.control.surplus import LoadMode

#: Point the external active power setpoint is written to (command set_active_power).
SETPOINT_POINT = "controller.active_power_setpoint"
SETPOINT_LIMIT_W = 10_000_000.0
GRID_TARGET_LIMIT_W = 1_000_000.0
HEARTBEAT_MAX = 65534


@dataclass(frozen=True, slots=True)
class ModeChange:
    mode: Mode


@dataclass(frozen=True, slots=True)
class SetpointChange:
    power_w: float  # > 0 discharge


@dataclass(frozen=True, slots=True)
class GridTargetChange:
    target_w: float  # > 0 import


@dataclass(frozen=True, slots=True)
class ReserveChange:
    soc_pct: float


@dataclass(frozen=True, slots=True)
class HeartbeatEvent:
    counter: int


@dataclass(frozen=True, slots=True)
class AlarmReset:
    pass


@dataclass(frozen=True, slots=True)
class SurplusLoadModeChange:
    index: int  # 1-based
    mode: LoadMode


LocalEvent = (
    ModeChange
    | SetpointChange
    | GridTargetChange
    | ReserveChange
    | HeartbeatEvent
    | AlarmReset
    | SurplusLoadModeChange
)


#: grid: the profile's law on the grid reading; setpoint: SCADA's active power setpoint;
#: zero: 0 W; recharge: the emergency recharge per node; ramp_down: the sensor-loss ramp.
Law = Literal["grid", "setpoint", "zero", "recharge", "ramp_down"]


@dataclass(frozen=True, slots=True)
class LoopConfig:
    """Which math the controllers apply in a state."""

    law: Law
    allow_charge: bool = True
    allow_discharge: bool = True


LOOP_CONFIG: dict[State, LoopConfig] = {
    State.STOP: LoopConfig("zero"),
    State.ACTIVATE: LoopConfig("zero"),
    State.FAULT: LoopConfig("zero"),
    State.BACKUP: LoopConfig("zero"),
    State.MAXSELF: LoopConfig("grid"),
    State.CHARGEONLY: LoopConfig("grid", allow_discharge=False),
    State.SETPOINT: LoopConfig("setpoint"),
    State.SENSOR_LOSS: LoopConfig("ramp_down"),
    State.EMERGENCY_RECHARGE: LoopConfig("recharge", allow_discharge=False),
}


class Rejected(Exception):
    """A command refused, with the code the faces map and a reason for the operator."""

    def __init__(self, code: RejectCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason

    def result(self, request: CommandRequest) -> CommandResult:
        return CommandResult.reject(request, self.code, self.reason)


def to_event(request: CommandRequest) -> LocalEvent:
    """The local event for a request, or `Rejected` if its payload is not valid."""
    parser = _PARSERS.get(request.command)
    if parser is None:
        raise Rejected(RejectCode.INVALID_VALUE, f"unknown command '{request.command}'")
    return parser(request)


def _mode_event(request: CommandRequest) -> ModeChange:
    number = _integer(request, "mode")
    if number not in {m.value for m in Mode}:
        allowed = ", ".join(f"{m.value} ({m.name.lower()})" for m in Mode)
        raise Rejected(RejectCode.OUT_OF_RANGE, f"mode {number} is unknown; allowed: {allowed}")
    return ModeChange(Mode(number))


def _setpoint_event(request: CommandRequest) -> SetpointChange:
    return SetpointChange(_number(request, "active power setpoint", SETPOINT_LIMIT_W))


def _grid_target_event(request: CommandRequest) -> GridTargetChange:
    return GridTargetChange(_number(request, "grid target", GRID_TARGET_LIMIT_W))


def _reserve_event(request: CommandRequest) -> ReserveChange:
    value = _number(request, "reserve SoC", math.inf)
    if not 0.0 <= value <= 100.0:
        raise Rejected(
            RejectCode.OUT_OF_RANGE, f"reserve SoC {value:g} % is out of range; allowed 0 .. 100"
        )
    return ReserveChange(value)


def _heartbeat_event(request: CommandRequest) -> HeartbeatEvent:
    counter = _integer(request, "heartbeat counter")
    if not 0 <= counter <= HEARTBEAT_MAX:
        raise Rejected(
            RejectCode.OUT_OF_RANGE,
            f"heartbeat counter {counter} is out of range; allowed 0 .. {HEARTBEAT_MAX}",
        )
    return HeartbeatEvent(counter)


def _reset_event(request: CommandRequest) -> AlarmReset:
    if request.value is not None and not request.value:
        raise Rejected(RejectCode.INVALID_VALUE, "reset alarms: write 1 (true) to reset")
    return AlarmReset()


def _surplus_event(request: CommandRequest) -> SurplusLoadModeChange:
    parts = (request.point_id or "").split(".")
    if len(parts) != 3 or parts[0] != "surplus" or not parts[1].isdigit():
        raise Rejected(
            RejectCode.INVALID_VALUE, "set_surplus_load needs the point surplus.<n>.mode"
        )
    number = _integer(request, "surplus load mode")
    if number not in {m.value for m in LoadMode}:
        raise Rejected(
            RejectCode.OUT_OF_RANGE,
            f"surplus load mode {number} is unknown; allowed: 0 (auto), 1 (off), 2 (on)",
        )
    return SurplusLoadModeChange(int(parts[1]), LoadMode(number))


#: Each command's payload parser: the command interface's whole vocabulary.
_PARSERS: dict[str, Callable[[CommandRequest], LocalEvent]] = {
    "set_mode": _mode_event,
    "set_active_power": _setpoint_event,
    "set_grid_target": _grid_target_event,
    "set_reserve_soc": _reserve_event,
    "heartbeat": _heartbeat_event,
    "reset_alarms": _reset_event,
    "set_surplus_load": _surplus_event,
}


def _number(request: CommandRequest, what: str, limit: float) -> float:
    value = request.value
    if value is None:
        raise Rejected(RejectCode.INVALID_VALUE, f"{what}: a value is required")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Rejected(RejectCode.INVALID_VALUE, f"{what}: {value!r} is not a finite number")
    if abs(value) > limit:
        raise Rejected(
            RejectCode.OUT_OF_RANGE,
            f"{what}: {value:g} is out of range; allowed -{limit:g} .. {limit:g}",
        )
    return float(value)


def _integer(request: CommandRequest, what: str) -> int:
    value = _number(request, what, math.inf)
    if value != int(value):
        raise Rejected(RejectCode.INVALID_VALUE, f"{what}: {value:g} is not a whole number")
    return int(value)
