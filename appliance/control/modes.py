"""The hierarchical state machine: states, transitions, conditions and entry/exit actions.

The definition is data (`STATES`, `TRANSITIONS`); `ModeMachine` runs it on the `transitions`
library's HierarchicalMachine, and `state_doc.py` renders docs/state-machine.md from the same
data. The operating states share a parent, so a transition declared on ``operating`` (stop,
lost inverters, heartbeat timeout, the overrides) applies to each of them.

A transition happens only from its declared sources and only when all its conditions hold;
otherwise it is refused and the state does not change. Entry and exit actions are named here
and carried out by the site controller (`ModeListener`).
"""

from __future__ import annotations

import enum
import functools
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

from transitions import MachineError
from transitions.extensions.nesting import HierarchicalMachine, NestedState

_LOG = logging.getLogger(__name__)
# The library logs every callback and state change at INFO; `ModeMachine.fire` logs each
# transition once, so keep the library to warnings.
logging.getLogger("transitions").setLevel(logging.WARNING)

SEPARATOR = "."


class State(enum.Enum):
    STOP = "stop"
    FAULT = "fault"
    BACKUP = "backup"
    EMERGENCY_RECHARGE = "emergency_recharge"
    OPERATING = "operating"
    ACTIVATE = "operating.activate"
    MAXSELF = "operating.maxself"
    CHARGEONLY = "operating.chargeonly"
    SETPOINT = "operating.setpoint"
    SENSOR_LOSS = "operating.sensor_loss"

    @property
    def leaf(self) -> str:
        return self.value.rsplit(SEPARATOR, 1)[-1]

    def within(self, other: State) -> bool:
        """This state is `other` or one of its children."""
        return self is other or self.value.startswith(other.value + SEPARATOR)


class Mode(enum.IntEnum):
    """Requested operating mode: the values of the point controller.mode."""

    STOP = 0
    ACTIVATE = 1
    MAXSELF = 2
    CHARGEONLY = 3
    SETPOINT = 4


#: The state each requested mode runs in when nothing overrides it.
MODE_STATE: dict[Mode, State] = {
    Mode.STOP: State.STOP,
    Mode.ACTIVATE: State.ACTIVATE,
    Mode.MAXSELF: State.MAXSELF,
    Mode.CHARGEONLY: State.CHARGEONLY,
    Mode.SETPOINT: State.SETPOINT,
}

#: Values of the point controller.state (its enum in models/points.yaml).
STATE_NUMBER: dict[State, int] = {
    State.STOP: 0,
    State.ACTIVATE: 1,
    State.MAXSELF: 2,
    State.CHARGEONLY: 3,
    State.SETPOINT: 4,
    State.EMERGENCY_RECHARGE: 10,
    State.SENSOR_LOSS: 11,
    State.BACKUP: 12,  # "off_grid" in the point table
    State.FAULT: 14,
}

#: States whose nodes follow the grid reading.
GRID_STATES = frozenset({State.MAXSELF, State.CHARGEONLY})
#: States that override every external command (only stop is recorded for later).
OVERRIDE_STATES = frozenset({State.FAULT, State.BACKUP, State.EMERGENCY_RECHARGE})


class Action(enum.Enum):
    HOLD_ZERO = "command 0 W to every node"
    RESET_PID = "reset the PID bumpless from the measured cluster power"
    RAMPS_OFF = "grid-code ramps off (instantaneous reaction)"
    RAMPS_AS_CONFIGURED = "grid-code ramps as configured"
    RAMP_FROM_MEASURED = "the setpoint ramp starts at the measured cluster power"
    START_SENSOR_LOSS_RAMP = "start the x0.75 per cycle ramp-down from the last commands"
    START_RECHARGE = "start the steady recharge of the nodes at the safety floor"
    REQUEST_STOP = "the requested mode becomes stop (an operator must ask again)"


@dataclass(frozen=True, slots=True)
class StateDef:
    state: State
    description: str
    on_enter: tuple[Action, ...] = ()
    on_exit: tuple[Action, ...] = ()


@dataclass(frozen=True, slots=True)
class TransitionDef:
    trigger: str
    sources: tuple[State, ...]
    dest: State
    conditions: tuple[str, ...] = ()
    description: str = ""


STATES: tuple[StateDef, ...] = (
    StateDef(State.STOP, "Safe: every node at 0 W.", on_enter=(Action.HOLD_ZERO,)),
    StateDef(
        State.FAULT,
        "Critical system error (BMS protection alarm, over-temperature): 0 W until reset.",
        on_enter=(Action.HOLD_ZERO, Action.REQUEST_STOP),
    ),
    StateDef(
        State.BACKUP,
        "Off grid (a phase below 230 V - 40 %): the inverters supply the site on their own.",
        on_enter=(Action.HOLD_ZERO,),
        on_exit=(Action.RESET_PID,),
    ),
    StateDef(
        State.EMERGENCY_RECHARGE,
        "A cell at the safety floor: steady recharge from the grid until the cells are safe.",
        on_enter=(Action.START_RECHARGE,),
        on_exit=(Action.RESET_PID,),
    ),
    StateDef(
        State.OPERATING,
        "At least one inverter active and no critical error.",
        on_exit=(Action.HOLD_ZERO,),
    ),
    StateDef(State.ACTIVATE, "Inverters ready, held at 0 W.", on_enter=(Action.HOLD_ZERO,)),
    StateDef(
        State.MAXSELF,
        "Grid nullification: the cluster drives the grid exchange to the grid target.",
        on_enter=(Action.RESET_PID, Action.RAMPS_OFF),
    ),
    StateDef(
        State.CHARGEONLY,
        "As maxself, but the cluster only charges (never discharges).",
        on_enter=(Action.RESET_PID, Action.RAMPS_OFF),
    ),
    StateDef(
        State.SETPOINT,
        "The cluster follows the active power setpoint from SCADA.",
        on_enter=(Action.RAMPS_AS_CONFIGURED, Action.RAMP_FROM_MEASURED),
        on_exit=(Action.RAMPS_OFF,),
    ),
    StateDef(
        State.SENSOR_LOSS,
        "Grid reading missing: the commands fall by x0.75 per cycle to 0 W.",
        on_enter=(Action.START_SENSOR_LOSS_RAMP,),
        on_exit=(Action.RESET_PID,),
    ),
)

_ALL_BUT_FAULT = (State.STOP, State.BACKUP, State.EMERGENCY_RECHARGE, State.OPERATING)
_CAN_RUN = ("inverter_active", "no_critical_error")

TRANSITIONS: tuple[TransitionDef, ...] = (
    TransitionDef("go_stop", (State.OPERATING,), State.STOP, (), "mode stop requested"),
    TransitionDef(
        "go_activate",
        (State.STOP, State.OPERATING),
        State.ACTIVATE,
        _CAN_RUN,
        "mode activate requested",
    ),
    TransitionDef(
        "go_maxself",
        (State.STOP, State.OPERATING),
        State.MAXSELF,
        (*_CAN_RUN, "meter_ok"),
        "mode maxself requested, or the grid reading is back",
    ),
    TransitionDef(
        "go_chargeonly",
        (State.STOP, State.OPERATING),
        State.CHARGEONLY,
        (*_CAN_RUN, "meter_ok"),
        "mode chargeonly requested, or the grid reading is back",
    ),
    TransitionDef(
        "go_setpoint",
        (State.STOP, State.OPERATING),
        State.SETPOINT,
        (*_CAN_RUN, "has_setpoint"),
        "mode setpoint requested",
    ),
    TransitionDef(
        "lose_meter",
        (State.MAXSELF, State.CHARGEONLY),
        State.SENSOR_LOSS,
        (),
        "grid reading missing",
    ),
    TransitionDef(
        "lose_inverters",
        (State.OPERATING, State.EMERGENCY_RECHARGE),
        State.STOP,
        (),
        "no inverter active",
    ),
    TransitionDef(
        "heartbeat_timeout",
        (State.OPERATING,),
        State.STOP,
        (),
        "no SCADA heartbeat within the timeout",
    ),
    TransitionDef(
        "recharge",
        (State.STOP, State.OPERATING),
        State.EMERGENCY_RECHARGE,
        ("inverter_active",),
        "a cell reached the safety floor",
    ),
    TransitionDef(
        "recharged",
        (State.EMERGENCY_RECHARGE,),
        State.STOP,
        (),
        "all cells back above the safe voltage",
    ),
    TransitionDef(
        "island",
        (State.STOP, State.OPERATING, State.EMERGENCY_RECHARGE),
        State.BACKUP,
        (),
        "a phase voltage below 230 V - 40 %",
    ),
    TransitionDef(
        "grid_back", (State.BACKUP,), State.STOP, (), "all phases back for the return delay"
    ),
    TransitionDef("trip", _ALL_BUT_FAULT, State.FAULT, (), "critical system error"),
    TransitionDef(
        "reset", (State.FAULT,), State.STOP, ("no_critical_error",), "alarms reset, cause gone"
    ),
)

_TRIGGERS = frozenset(t.trigger for t in TRANSITIONS)

CONDITION_TEXT: dict[str, str] = {
    "inverter_active": "no inverter is active",
    "no_critical_error": "a critical system error is active",
    "meter_ok": "the grid meter reading is missing",
    "has_setpoint": "no active power setpoint has been written",
}


@dataclass(frozen=True, slots=True)
class Conditions:
    """The facts the transition conditions read, refreshed by the controller every cycle."""

    inverter_active: bool = False
    critical_error: bool = False
    meter_ok: bool = False
    has_setpoint: bool = False


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    trigger: str
    source: State
    dest: State


class ModeListener(Protocol):
    def perform(self, action: Action, state: State) -> None: ...


class _State(NestedState):
    separator = SEPARATOR


class _Machine(HierarchicalMachine):
    state_cls = _State


class ModeMachine:
    """Runs the definition; `fire` returns whether the transition happened."""

    state: str  # kept up to date by the transitions library

    def __init__(self, listener: ModeListener, initial: State = State.STOP) -> None:
        self.listener = listener
        self.conditions = Conditions()
        self.history: deque[TransitionRecord] = deque(maxlen=64)
        self._machine = _Machine(
            model=self,
            states=[self._state_config(d) for d in STATES if SEPARATOR not in d.state.value],
            transitions=[
                {
                    "trigger": t.trigger,
                    "source": [s.value for s in t.sources],
                    "dest": t.dest.value,
                    "conditions": list(t.conditions),
                }
                for t in TRANSITIONS
            ],
            initial=initial.value,
            auto_transitions=False,
            send_event=True,
            model_attribute="state",
        )

    @property
    def current(self) -> State:
        return State(self.state)

    def fire(self, trigger: str) -> bool:
        source = self.current
        try:
            done = trigger in _TRIGGERS and bool(self._machine.trigger_event(self, trigger))
        except MachineError:  # declared, but not from this state
            done = False
        if done:
            self.history.append(TransitionRecord(trigger, source, self.current))
            _LOG.info("controller state %s -> %s (%s)", source.value, self.current.value, trigger)
        else:
            _LOG.debug(
                "transition %s refused in %s: %s", trigger, source.value, self.refusal(trigger)
            )
        return done

    def refusal(self, trigger: str) -> str | None:
        """Why `trigger` would be refused now, or None if it would fire."""
        defs = [t for t in TRANSITIONS if t.trigger == trigger]
        if not defs:
            return f"unknown transition {trigger!r}"
        current = self.current
        for t in defs:
            if any(current.within(s) for s in t.sources):
                failed = [c for c in t.conditions if not getattr(self, c)(None)]
                if not failed:
                    return None
                return "; ".join(CONDITION_TEXT[c] for c in failed)
        return f"not allowed in state {current.value}"

    # -- conditions (called by the transitions library with the event data) --------------

    def inverter_active(self, _event: object) -> bool:
        return self.conditions.inverter_active

    def no_critical_error(self, _event: object) -> bool:
        return not self.conditions.critical_error

    def meter_ok(self, _event: object) -> bool:
        return self.conditions.meter_ok

    def has_setpoint(self, _event: object) -> bool:
        return self.conditions.has_setpoint

    # -- internals -----------------------------------------------------------------------

    def _state_config(self, d: StateDef) -> dict[str, Any]:
        config: dict[str, Any] = {
            "name": d.state.leaf,
            "on_enter": [functools.partial(self._perform, a, d.state) for a in d.on_enter],
            "on_exit": [functools.partial(self._perform, a, d.state) for a in d.on_exit],
        }
        children = [c for c in STATES if c.state.value.startswith(d.state.value + SEPARATOR)]
        if children:
            config["children"] = [self._state_config(c) for c in children]
        return config

    def _perform(self, action: Action, state: State, _event: object) -> None:
        self.listener.perform(action, state)


@dataclass(frozen=True, slots=True)
class Facts:
    """What the supervisor knows this cycle, beyond the transition conditions."""

    conditions: Conditions
    off_grid: bool = False
    floor_active: bool = False


def next_trigger(current: State, requested: Mode, facts: Facts) -> str | None:
    """The transition that brings the machine one step closer to where it belongs, or None.

    Precedence: fault (latched; only the reset command leaves it) > backup (off grid) >
    emergency recharge > no inverter active > the requested mode (a grid mode without a grid
    reading degrades to sensor loss).
    """
    c = facts.conditions
    if current is State.FAULT:
        return None
    if c.critical_error:
        return "trip"
    if facts.off_grid or current is State.BACKUP:
        return (
            ("island" if current is not State.BACKUP else None) if facts.off_grid else "grid_back"
        )
    if facts.floor_active or current is State.EMERGENCY_RECHARGE:
        return _recharge_trigger(current, c.inverter_active, facts.floor_active)
    if not c.inverter_active:
        return "lose_inverters" if current.within(State.OPERATING) else None
    return _mode_trigger(current, MODE_STATE[requested], c)


def _recharge_trigger(current: State, inverter_active: bool, floor_active: bool) -> str | None:
    if not floor_active:  # in emergency recharge and the cells are safe again
        return "recharged"
    if inverter_active:
        return None if current is State.EMERGENCY_RECHARGE else "recharge"
    # At the floor but nothing to recharge with: wait in stop, safe.
    return None if current is State.STOP else "lose_inverters"


def _mode_trigger(current: State, target: State, c: Conditions) -> str | None:
    if target in GRID_STATES and not c.meter_ok:
        if current in GRID_STATES:
            return "lose_meter"
        if current is State.SENSOR_LOSS or current is State.STOP:
            return None
        target = State.STOP
    if current is target:
        return None
    return f"go_{target.leaf}"
